"""eventbus transport for Apache Kafka (aiokafka): ``EventBus("kafka://host:9092")``.

Installed as the ``kafka`` entry point of ``eventbus.transports``; users never import it.
"""

from eventbus_kafka.transport import KafkaTransport
from eventbus_kafka.url import KafkaSettings, parse_url

__all__ = ["KafkaSettings", "KafkaTransport", "parse_url"]
