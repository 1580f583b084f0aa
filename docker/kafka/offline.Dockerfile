# The project's Kafka image, cyberstream-kafka:4.1.1, built with no registry and no network:
# a Debian base with Java made by scripts/images.sh (debootstrap + docker import), Kafka's
# jars from the project's Maven cache (cyberstream/broker/pom.xml, plus kafka-tools for
# kafka-topics.sh), and an entrypoint with the apache/kafka image's conventions: KAFKA_*
# variables are server properties, CLUSTER_ID formats the log directory, /opt/kafka/bin
# holds kafka-topics.sh, the data live in /var/lib/kafka/data, the user is appuser (1000).
# The build context is the directory scripts/images.sh assembles (build/kafka-context).
ARG BASE=cyberstream-base/java:bookworm
FROM ${BASE}
COPY jars/ /opt/kafka/libs/
COPY bin/ /opt/kafka/bin/
COPY config/ /opt/kafka/config/
RUN useradd --uid 1000 --user-group --home-dir /opt/kafka --no-create-home appuser \
 && mkdir -p /var/lib/kafka/data /opt/kafka/logs \
 && chmod 0755 /opt/kafka/bin/* \
 && chown -R appuser:appuser /var/lib/kafka /opt/kafka/logs /opt/kafka/config
LABEL org.opencontainers.image.title="cyberstream-kafka" \
      org.opencontainers.image.description="Apache Kafka 4.1.1 (KRaft) for cyberstream, built offline"
USER appuser
EXPOSE 9092
ENTRYPOINT ["/opt/kafka/bin/run"]
