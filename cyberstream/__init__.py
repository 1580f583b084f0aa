"""cyberstream core: what the producer, training and detector packages share.

One place for each shared fact: the event schema (:mod:`cyberstream.schema`), how a
connection is identified (:mod:`cyberstream.connections`), topic names and settings
(:mod:`cyberstream.config`), Kafka client helpers (:mod:`cyberstream.kafka_io`) and the
local broker (:mod:`cyberstream.broker`).
"""

__version__ = "0.1.0"
