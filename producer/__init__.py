"""Producer: the LANL-like generator and the Kafka replay of a CyberFLTenDays CSV."""
