"""Detector: streaming features per connection, batch + online scoring, alerts."""
