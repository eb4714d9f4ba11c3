#!/usr/bin/env python3
"""Reads every record of a topic as a standard Confluent consumer would:
confluent-kafka's Consumer, its SchemaRegistryClient pointed at a Confluent
Schema Registry URL (ticklake's own: http://<http.listen>/schema-registry),
and its AvroDeserializer (fastavro underneath). Prints one JSON object per
record on stdout, in partition and offset order:

    {"partition": 0, "offset": 12, "schema_id": 3, "value": {...}}

Logical types must come through as Python's types: a timestamp-micros field
as a datetime and a decimal as a Decimal. They are printed as microseconds
since the epoch and as a plain decimal string ("123.45000000"); a value
of another type fails the run, so a schema served without its logical
types cannot pass as decoded.

    sr_decode.py --brokers HOST:PORT --topic T --registry URL

Reads each partition from its low to its high watermark as of the start.
Exits 1, naming what is missing, when confluent-kafka or its schema-registry
and Avro parts (httpx2, authlib, attrs, cachetools, fastavro) are not
installed; see scripts/requirements-test.txt.
"""
import argparse
import datetime
import decimal
import json
import struct
import sys
import uuid

try:
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext
except ImportError as e:
    sys.exit(
        f"sr_decode: {e}: install scripts/requirements-test.txt "
        "(scripts/setup-python.sh) for confluent-kafka's schema registry and Avro parts"
    )

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
TIMESTAMPS = ("timestamp", "ingestion_timestamp", "received_at")
DECIMALS = ("price", "quantity")


def micros(field, v):
    if not isinstance(v, datetime.datetime):
        raise SystemExit(f"sr_decode: {field} decoded as {type(v).__name__}, not a datetime")
    if v.tzinfo is None:
        v = v.replace(tzinfo=datetime.timezone.utc)
    return (v - EPOCH) // datetime.timedelta(microseconds=1)


def plain(record):
    out = {}
    for k, v in record.items():
        if k in TIMESTAMPS:
            out[k] = micros(k, v)
        elif k in DECIMALS:
            if not isinstance(v, decimal.Decimal):
                raise SystemExit(f"sr_decode: {k} decoded as {type(v).__name__}, not a Decimal")
            out[k] = format(v, "f")
        elif isinstance(v, bytes):
            out[k] = v.hex()
        else:
            out[k] = v
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--registry", required=True, help="Schema Registry base URL")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds for the whole read")
    args = ap.parse_args()

    registry = SchemaRegistryClient({"url": args.registry})
    # No reader schema: each record is decoded with the writer's schema,
    # fetched by the id in its frame (GET /schemas/ids/{id}).
    deserialize = AvroDeserializer(registry)
    consumer = Consumer(
        {
            "bootstrap.servers": args.brokers,
            "group.id": f"sr-decode-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    md = consumer.list_topics(args.topic, timeout=10)
    topic = md.topics.get(args.topic)
    if topic is None or topic.error is not None:
        raise SystemExit(f"sr_decode: topic {args.topic}: {topic.error if topic else 'missing'}")
    ends = {}
    assignment = []
    for p in sorted(topic.partitions):
        lo, hi = consumer.get_watermark_offsets(TopicPartition(args.topic, p), timeout=10)
        if hi > lo:
            ends[p] = hi
            assignment.append(TopicPartition(args.topic, p, lo))
    consumer.assign(assignment)

    records = []
    done = {p: False for p in ends}
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=args.timeout)
    while not all(done.values()):
        if datetime.datetime.now() > deadline:
            raise SystemExit(f"sr_decode: timed out; read {len(records)} records, ends {ends}")
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            raise SystemExit(f"sr_decode: {msg.error()}")
        raw = msg.value()
        if len(raw) < 5 or raw[0] != 0:
            raise SystemExit(f"sr_decode: offset {msg.offset()} is not in the Confluent wire format")
        ctx = SerializationContext(msg.topic(), MessageField.VALUE)
        value = deserialize(raw, ctx)
        records.append(
            {
                "partition": msg.partition(),
                "offset": msg.offset(),
                "schema_id": struct.unpack(">I", raw[1:5])[0],
                "value": plain(value),
            }
        )
        if msg.offset() + 1 >= ends[msg.partition()]:
            done[msg.partition()] = True
    consumer.close()
    records.sort(key=lambda r: (r["partition"], r["offset"]))
    for r in records:
        print(json.dumps(r, sort_keys=True))
    print(f"sr_decode: {len(records)} records from {args.topic}", file=sys.stderr)


if __name__ == "__main__":
    main()
