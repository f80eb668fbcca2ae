//go:build integration

package testenv

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestKafkaSmoke proves the local broker end to end: create a topic,
// produce keyed records idempotently with acks=all, consume them back in
// per-key order through a consumer group.
func TestKafkaSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	brokers := KafkaBrokers(t)
	topic := fmt.Sprintf("certnode.smoke.%d", time.Now().UnixNano())

	admin, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	adm := kadm.NewClient(admin)
	if _, err := adm.CreateTopic(ctx, 3, 1, nil, topic); err != nil {
		t.Fatalf("create topic: %v", err)
	}
	defer adm.DeleteTopics(context.Background(), topic)

	prod, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.RequiredAcks(kgo.AllISRAcks()), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	const n, keys = 3000, 7
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("tenant-%d", i%keys)
		prod.Produce(ctx, &kgo.Record{Key: []byte(key), Value: []byte(strconv.Itoa(i))}, func(_ *kgo.Record, err error) {
			if err != nil {
				t.Errorf("produce: %v", err)
			}
		})
	}
	if err := prod.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	cons, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumerGroup(topic+".group"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	last := map[string]int{}
	partitionOf := map[string]int32{}
	got := 0
	for got < n {
		fetches := cons.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("consumed %d of %d: %v", got, n, err)
		}
		fetches.EachError(func(topic string, p int32, err error) { t.Fatalf("fetch %s/%d: %v", topic, p, err) })
		fetches.EachRecord(func(r *kgo.Record) {
			k := string(r.Key)
			v, _ := strconv.Atoi(string(r.Value))
			if prev, ok := last[k]; ok && v <= prev {
				t.Fatalf("key %s out of order: %d after %d", k, v, prev)
			}
			if p, ok := partitionOf[k]; ok && p != r.Partition {
				t.Fatalf("key %s on partitions %d and %d", k, p, r.Partition)
			}
			last[k], partitionOf[k] = v, r.Partition
			got++
		})
	}
	if err := cons.CommitUncommittedOffsets(ctx); err != nil {
		t.Fatalf("commit: %v", err)
	}
	if len(last) != keys {
		t.Fatalf("saw %d keys, want %d", len(last), keys)
	}
}

// TestClickHouseSmoke writes a batch over the native protocol and reads it
// back, with the explicit column lists ClickHouse 18.16 needs.
func TestClickHouseSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{ClickHouseAddr(t)}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Ping(ctx); err != nil {
		t.Fatalf("ping: %v", err)
	}
	table := fmt.Sprintf("smoke_%d", time.Now().UnixNano())
	if err := conn.Exec(ctx, "CREATE TABLE "+table+" (id UInt64, tenant String, at DateTime) ENGINE = MergeTree() ORDER BY id"); err != nil {
		t.Fatalf("create: %v", err)
	}
	defer conn.Exec(context.Background(), "DROP TABLE IF EXISTS "+table)

	batch, err := conn.PrepareBatch(ctx, "INSERT INTO "+table+" (id, tenant, at)")
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	const n = 5000
	for i := 0; i < n; i++ {
		if err := batch.Append(uint64(i), fmt.Sprintf("tenant-%d", i%3), now); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Send(); err != nil {
		t.Fatalf("send: %v", err)
	}
	var count, sum uint64
	var tenants uint64
	if err := conn.QueryRow(ctx, "SELECT count(), sum(id), uniqExact(tenant) FROM "+table).Scan(&count, &sum, &tenants); err != nil {
		t.Fatalf("select: %v", err)
	}
	if count != n || sum != n*(n-1)/2 || tenants != 3 {
		t.Fatalf("read back count=%d sum=%d tenants=%d", count, sum, tenants)
	}
	var at time.Time
	if err := conn.QueryRow(ctx, "SELECT max(at) FROM "+table).Scan(&at); err != nil || !at.Equal(now) {
		t.Fatalf("DateTime round trip: %v %v want %v", at, err, now)
	}
}
