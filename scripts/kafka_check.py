#!/usr/bin/env python3
"""Small Kafka helper for ticklake's test scripts and integration tests.

Uses confluent-kafka (librdkafka bundled in the wheel) because Debian's kcat
links an old librdkafka that fails the ApiVersions handshake against Tansu.

Usage:
  kafka_check.py metadata <bootstrap>
      exit 0 if a metadata request succeeds (broker is up and answering).
  kafka_check.py create-topic <bootstrap> <topic> <partitions>
      create the topic; succeeds if it already exists with that many partitions.
  kafka_check.py produce-count <bootstrap> <topic>
      print {"topic":..,"partitions":{"0":[lo,hi],...},"records":N} where N is
      the sum over partitions of (high watermark - low watermark).
  kafka_check.py lag <bootstrap> <group> <topic>
      print {"group":..,"topic":..,"partitions":{"0":{"committed":c,"high":h}},"lag":N}
      where N is the sum of (high - committed); a partition the group never
      committed counts from its low watermark. What lag tools (burrow, kcat)
      would report for the group.
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TIMEOUT_S = 10.0


def _admin(bootstrap):
    return AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "socket.timeout.ms": 5000,
            # librdkafka logs connection refusals to stderr on its own; keep
            # the output of polling loops readable.
            "log_level": 3,
        }
    )


def _die(msg):
    print(f"kafka_check: {msg}", file=sys.stderr)
    sys.exit(1)


def cmd_metadata(bootstrap):
    try:
        md = _admin(bootstrap).list_topics(timeout=TIMEOUT_S)
    except KafkaException as e:
        _die(f"metadata from {bootstrap} failed: {e}")
    if not md.brokers:
        _die(f"metadata from {bootstrap} lists no brokers")
    print(
        json.dumps(
            {
                "brokers": {str(b.id): f"{b.host}:{b.port}" for b in md.brokers.values()},
                "topics": sorted(md.topics),
            }
        )
    )


def _partition_count(admin, topic):
    md = admin.list_topics(topic=topic, timeout=TIMEOUT_S)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return None
    return len(t.partitions)


def cmd_create_topic(bootstrap, topic, partitions):
    partitions = int(partitions)
    admin = _admin(bootstrap)
    fut = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
        operation_timeout=TIMEOUT_S,
        request_timeout=TIMEOUT_S,
    )[topic]
    try:
        fut.result()
    except KafkaException as e:
        err = e.args[0]
        if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
            _die(f"create topic {topic}: {err}")
    # Wait until the broker's metadata shows the topic with its partitions, so
    # a test that produces right after this does not race topic creation.
    deadline = time.monotonic() + TIMEOUT_S
    n = None
    while time.monotonic() < deadline:
        n = _partition_count(admin, topic)
        if n == partitions:
            print(json.dumps({"topic": topic, "partitions": n}))
            return
        time.sleep(0.2)
    _die(f"topic {topic} has {n} partitions, wanted {partitions}")


def cmd_produce_count(bootstrap, topic):
    n = _partition_count(_admin(bootstrap), topic)
    if n is None:
        _die(f"topic {topic} does not exist")
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # Never joins a group or commits: only used for watermark queries.
            "group.id": "ticklake-kafka-check",
            "enable.auto.commit": False,
            "log_level": 3,
        }
    )
    try:
        parts = {}
        total = 0
        for p in range(n):
            lo, hi = consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=TIMEOUT_S, cached=False
            )
            parts[str(p)] = [lo, hi]
            total += hi - lo
    except KafkaException as e:
        _die(f"watermarks for {topic}: {e}")
    finally:
        consumer.close()
    print(json.dumps({"topic": topic, "partitions": parts, "records": total}))


def cmd_lag(bootstrap, group, topic):
    n = _partition_count(_admin(bootstrap), topic)
    if n is None:
        _die(f"topic {topic} does not exist")
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # Reads the group's committed offsets; never subscribes or commits.
            "group.id": group,
            "enable.auto.commit": False,
            "log_level": 3,
        }
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(n)]
        committed = consumer.committed(tps, timeout=TIMEOUT_S)
        parts = {}
        lag = 0
        for tp in committed:
            lo, hi = consumer.get_watermark_offsets(
                TopicPartition(topic, tp.partition), timeout=TIMEOUT_S, cached=False
            )
            c = tp.offset if tp.offset >= 0 else None
            parts[str(tp.partition)] = {"committed": c, "high": hi}
            lag += hi - (c if c is not None else lo)
    except KafkaException as e:
        _die(f"lag of {group} on {topic}: {e}")
    finally:
        consumer.close()
    print(json.dumps({"group": group, "topic": topic, "partitions": parts, "lag": lag}))


def main(argv):
    cmds = {
        "lag": (cmd_lag, 3),
        "metadata": (cmd_metadata, 1),
        "create-topic": (cmd_create_topic, 3),
        "produce-count": (cmd_produce_count, 2),
    }
    if len(argv) < 2 or argv[1] not in cmds or len(argv) - 2 != cmds[argv[1]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    fn, _ = cmds[argv[1]]
    fn(*argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
