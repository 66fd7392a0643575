"""eventbus transport for RabbitMQ: ``EventBus("amqp://guest:guest@127.0.0.1:5672/")``."""

from eventbus_rabbitmq.transport import RabbitMQTransport

__all__ = ["RabbitMQTransport"]
