#!/bin/bash
# kafka-topics.sh as in the Apache Kafka distribution (the healthcheck of docker-compose.yml uses it).
exec java -Xmx128m -Dlog4j2.configurationFile=/opt/kafka/config/tools-log4j2.properties \
  -cp "/opt/kafka/libs/*" org.apache.kafka.tools.TopicCommand "$@"
