"""eventbus transport for RabbitMQ: ``EventBus("amqp://guest:guest@127.0.0.1:5672/")``."""

from eventbus_rabbitmq import frames
from eventbus_rabbitmq.transport import RabbitMQTransport

# Before any connection exists: an out-of-range timestamp must not break a frame reader.
frames.install()

__all__ = ["RabbitMQTransport"]
