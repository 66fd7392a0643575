"""Header names the core writes and reads. Kept in one place: they are part of the wire format.

How a transport routes a message to one group or delays it is its own business (the Kafka
adapter keeps its routing headers private); these are the ones every transport carries."""

ATTEMPT = "eventbus-attempt"
"""1-based attempt number of the delivery that carries it; incremented on every redelivery through
the broker so the count travels with the message (several processes share it)."""

DATASCHEMA = "ce_dataschema"
"""CloudEvents ``dataschema``: a URI of the body's schema, written by a codec that has one (the
Avro codec: the registry's ``/schemas/ids/<id>``). Kafka carries it under this name (the
CloudEvents Kafka binding), RabbitMQ as ``cloudEvents_dataschema`` (the AMQP binding)."""

CAUSATION_ID = "eventbus-causation-id"
"""On a message published while a handler ran: the id of the message that handler was handling
(its correlation id travels as the message's ``correlation_id``; DESIGN 9)."""

EXPIRES_AT = "eventbus-expires-at"
"""When the message expires unhandled (``publish(..., ttl=)`` / ``expires_at=``): Unix time in
seconds, a decimal number (``1764612000.250``). Checked by the consumer before each attempt
(`eventbus.dispatch.expiry`). A dead letter carries it as ``eventbus-original-expires-at``
instead, so whoever reads the dead-letter queue handles it; a replay sends it without."""

DLQ_REASON = "eventbus-dlq-reason"
ERROR_TYPE = "eventbus-error-type"
ERROR_MESSAGE = "eventbus-error-message"
ERROR_TRACEBACK = "eventbus-error-traceback"
ORIGINAL_TOPIC = "eventbus-original-topic"
ORIGINAL_GROUP = "eventbus-original-group"
ORIGINAL_KIND = "eventbus-original-kind"
ATTEMPTS = "eventbus-attempts"
FAILED_AT = "eventbus-failed-at"
ORIGINAL_PARTITION = "eventbus-original-partition"
ORIGINAL_OFFSET = "eventbus-original-offset"
ORIGINAL_EXPIRES_AT = "eventbus-original-expires-at"

DEAD_LETTER_HEADERS = (
    DLQ_REASON,
    ERROR_TYPE,
    ERROR_MESSAGE,
    ERROR_TRACEBACK,
    ORIGINAL_TOPIC,
    ORIGINAL_GROUP,
    ORIGINAL_KIND,
    ATTEMPTS,
    FAILED_AT,
    ORIGINAL_PARTITION,
    ORIGINAL_OFFSET,
    ORIGINAL_EXPIRES_AT,
)
