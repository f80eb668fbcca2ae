// Package kafkatest holds helpers for tests on Kafka: franz-go's kfake, or
// the real broker.
package kafkatest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/certnode/certnode/internal/testenv"
)

// Refusal makes a kfake cluster refuse every produce to one topic (with
// POLICY_VIOLATION) while Refusing is true, and counts the refusals.
type Refusal struct {
	Refusing atomic.Bool
	Count    atomic.Int32
}

// RefuseProduce starts refusing produces to topic at once.
func RefuseProduce(t *testing.T, cluster *kfake.Cluster, adm *kadm.Client, topic string) *Refusal {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	details, err := adm.ListTopics(ctx, topic)
	if err != nil || details[topic].Err != nil {
		t.Fatalf("topic %s: %v %v", topic, err, details[topic].Err)
	}
	id := details[topic].ID
	// Newer produce requests name topics by id, older ones by name.
	isTopic := func(t kmsg.ProduceRequestTopic) bool { return t.Topic == topic || t.TopicID == id }
	r := &Refusal{}
	r.Refusing.Store(true)
	cluster.ControlKey(int16(kmsg.Produce), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		req := kreq.(*kmsg.ProduceRequest)
		if !r.Refusing.Load() || !slices.ContainsFunc(req.Topics, isTopic) {
			return nil, nil, false
		}
		r.Count.Add(1)
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition, sp.ErrorCode = rp.Partition, kerr.PolicyViolation.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	return r
}

// Committed returns group's committed offsets on topic, summed over
// partitions (a partition without a commit counts 0), so it equals the
// number of records committed when they were produced from offset 0.
func Committed(t testing.TB, adm *kadm.Client, group, topic string) int64 {
	t.Helper()
	n, err := committed(adm, group, topic)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func committed(adm *kadm.Client, group, topic string) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	offs, err := adm.FetchOffsets(ctx, group)
	if errors.Is(err, kerr.GroupIDNotFound) {
		return 0, nil // nothing committed yet
	}
	if err != nil {
		return 0, fmt.Errorf("fetch offsets of %s: %w", group, err)
	}
	var n int64
	for _, o := range offs[topic] {
		if o.Err != nil {
			return 0, fmt.Errorf("offset of %s/%d: %w", topic, o.Partition, o.Err)
		}
		n += max(o.At, 0)
	}
	return n, nil
}

// WaitCommitted waits until group committed n records of topic. A broker
// briefly without a group coordinator (just after a start, on a busy
// machine) is waited out like a commit not made yet.
func WaitCommitted(t testing.TB, adm *kadm.Client, group, topic string, n int64, limit time.Duration) {
	t.Helper()
	testenv.WaitFor(t, topic+" offsets committed", limit, func() (bool, string) {
		c, err := committed(adm, group, topic)
		if err != nil {
			return false, err.Error()
		}
		return c == n, fmt.Sprintf("%d of %d", c, n)
	})
}
