package kafka

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/certnode/certnode/internal/testenv"
)

// A broker reached over TLS, its certificate checked against the CA file,
// with SCRAM credentials: the right password produces, a wrong one or no
// TLS does not.
func TestTLSAndSASL(t *testing.T) {
	cert, certPEM, _ := testenv.SelfSigned(t, "broker")
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, certPEM, 0o600)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "certnode.requests"),
		kfake.TLS(&tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}),
		kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "ingest", "right-password"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	produce := func(cfg Config, password string) error {
		t.Setenv(SASLPasswordEnv, password)
		cl, err := NewClient(cfg, kgo.RequestRetries(0), kgo.RetryTimeout(2*time.Second))
		if err != nil {
			return err
		}
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		return cl.ProduceSync(ctx, &kgo.Record{Topic: "certnode.requests", Value: []byte("x")}).FirstErr()
	}
	cfg := Config{Brokers: c.ListenAddrs(), Partitions: 1, ReplicationFactor: 1, TLS: true, CAFile: ca, SASLMechanism: "SCRAM-SHA-256", SASLUser: "ingest"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := produce(cfg, "right-password"); err != nil {
		t.Fatalf("with the right credentials: %v", err)
	}
	if err := produce(cfg, "wrong-password"); err == nil {
		t.Fatal("a wrong password produced")
	}
	plain := cfg
	plain.TLS, plain.CAFile = false, ""
	if err := produce(plain, "right-password"); err == nil {
		t.Fatal("produced without TLS")
	}
	t.Setenv(SASLPasswordEnv, "")
	if _, err := NewClient(cfg); err == nil || !strings.Contains(err.Error(), SASLPasswordEnv) {
		t.Fatalf("no password: %v", err)
	}
	bad := Config{Brokers: []string{"b:9092"}, Partitions: 1, ReplicationFactor: 1, SASLMechanism: "SCRAM-SHA-1", CAFile: ca}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "SCRAM-SHA-1") || !strings.Contains(err.Error(), "CA file is for TLS") {
		t.Fatalf("a bad config: %v", err)
	}
}

// A role allowed to use the topics but not to create them starts when an
// administrator made them, and says what is missing when one was not.
func TestEnsureTopicsUnderACLs(t *testing.T) {
	all := (&Config{TopicPrefix: "certnode"}).Topics().All()
	var acls []kfake.ACL
	for _, topic := range all {
		for _, op := range []kmsg.ACLOperation{kmsg.ACLOperationDescribe, kmsg.ACLOperationWrite} {
			acls = append(acls, kfake.ACL{Resource: kmsg.ACLResourceTypeTopic, Name: topic, Pattern: kmsg.ACLResourcePatternTypeLiteral, Operation: op, Allow: true})
		}
	}
	t.Setenv(SASLPasswordEnv, "ingest-password")
	ensure := func(seeded []string) error {
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, seeded...), kfake.EnableSASL(), kfake.EnableACLs(),
			kfake.Superuser("SCRAM-SHA-256", "admin", "admin-password"), kfake.User("SCRAM-SHA-256", "ingest", "ingest-password", acls...))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cfg := Config{Brokers: c.ListenAddrs(), Partitions: 1, ReplicationFactor: 1, TopicPrefix: "certnode", SASLMechanism: "SCRAM-SHA-256", SASLUser: "ingest"}
		cl, err := NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return EnsureTopics(ctx, cl, cfg)
	}
	if err := ensure(all); err != nil {
		t.Fatalf("every topic made by an administrator: %v", err)
	}
	if err := ensure(all[1:]); err == nil || !strings.Contains(err.Error(), all[0]) || !strings.Contains(err.Error(), "administrator") {
		t.Fatalf("with %s missing: %v", all[0], err)
	}
}
