package translog

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/client"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/mod/sumdb/note"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/internal/kafkatest"
	"github.com/certnode/certnode/schemas"
)

// env is a log on an in-process Kafka.
type env struct {
	cfg    Config
	topics schemas.Topics
	cl     *kgo.Client
	adm    *kadm.Client
	vkey   string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	topics := schemas.TopicsFor(schemas.DefaultTopicPrefix)
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, topics.Receipts))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	skey, vkey, err := note.GenerateKey(rand.Reader, "test.certnode/log")
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := note.NewSigner(skey)
	cfg := DefaultConfig()
	cfg.Kafka = kafka.Config{Brokers: c.ListenAddrs(), Partitions: 2, ReplicationFactor: 1}
	cfg.Dir, cfg.Signer, cfg.VerifierKey, cfg.CheckpointInterval = t.TempDir(), signer, vkey, 100*time.Millisecond
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &env{cfg: cfg, topics: topics, cl: cl, adm: kadm.NewClient(cl), vkey: vkey}
}

// start runs a log until the returned stop.
func (e *env) start(t *testing.T) (*Sink, func()) {
	t.Helper()
	s, err := New(context.Background(), e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		s.Close()
	}
	t.Cleanup(stop)
	return s, stop
}

func (e *env) produce(t *testing.T, recs ...*kgo.Record) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

func (e *env) result(t *testing.T, tenant string, mod func(*schemas.Result)) (*kgo.Record, string) {
	t.Helper()
	b := make([]byte, 32)
	rand.Read(b)
	now := time.Now().UTC()
	r := &schemas.Result{V: 1, ID: "req_" + base64.RawURLEncoding.EncodeToString(b[:8]), Tenant: tenant, Kind: schemas.KindSign,
		Status: schemas.StatusSigned, Auth: schemas.AuthIngest, Receipt: []byte(`{}`), ReceiptID: base64.RawURLEncoding.EncodeToString(b),
		ReceivedAt: now, ProcessedAt: now}
	if mod != nil {
		mod(r)
	}
	val, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return &kgo.Record{Topic: e.topics.Receipts, Key: []byte(tenant), Value: val}, r.ReceiptID
}

// checkpoint waits for a checkpoint of size leaves, checked.
func (e *env) checkpoint(t *testing.T, srv *httptest.Server, size uint64) *log.Checkpoint {
	t.Helper()
	v, err := note.NewVerifier(e.vkey)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(srv.URL + "/checkpoint")
		if err == nil {
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if cp, _, _, err := log.ParseCheckpoint(raw, v.Name(), v); err == nil && cp.Size == size {
				return cp
			} else if err == nil && cp.Size > size {
				t.Fatalf("the log has %d leaves, want %d", cp.Size, size)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no checkpoint of %d leaves", size)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Signed receipts are logged once each, whatever else the topic holds or
// replays; each is the leaf its index names, provably.
func TestLogsSignedReceipts(t *testing.T) {
	e := newEnv(t)
	var recs []*kgo.Record
	var ids []string
	for range 5 {
		rec, id := e.result(t, "acme", nil)
		recs, ids = append(recs, rec), append(ids, id)
	}
	verify, _ := e.result(t, "acme", func(r *schemas.Result) { r.Kind, r.Status = schemas.KindVerify, schemas.StatusValid })
	failed, _ := e.result(t, "acme", func(r *schemas.Result) { r.Status, r.ReceiptID = schemas.StatusFailed, "" })
	foreign, _ := e.result(t, "acme", nil)
	foreign.Key = []byte("globex")
	recs = append(recs, verify, failed, foreign, replay(recs[0]),
		&kgo.Record{Topic: e.topics.Receipts, Key: []byte("acme"), Value: []byte("not json")})
	e.produce(t, recs...)
	s, stop := e.start(t)
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	kafkatest.WaitCommitted(t, e.adm, e.cfg.Group, e.topics.Receipts, int64(len(recs)), 20*time.Second)
	cp := e.checkpoint(t, srv, 5)

	pb, err := client.NewProofBuilder(context.Background(), cp.Size, client.FileFetcher{Root: filepath.Join(e.cfg.Dir, "log")}.ReadTile)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for _, id := range ids {
		at, ok := s.Index(id)
		if !ok || seen[at] {
			t.Fatalf("receipt %s: index %d %v", id, at, ok)
		}
		seen[at] = true
		hashes, err := pb.InclusionProof(context.Background(), at)
		if err != nil {
			t.Fatal(err)
		}
		if err := proof.VerifyInclusion(rfc6962.DefaultHasher, at, cp.Size, schemas.LeafHash(schemas.ReceiptLeaf(id)), hashes, cp.Hash); err != nil {
			t.Fatalf("receipt %s at %d: %v", id, at, err)
		}
	}

	// What the log serves: its index, key and files, not its private state.
	for path, want := range map[string]string{
		"/index/" + ids[2]:  fmt.Sprintf(`{"index":%d}`, must(s.Index(ids[2]))),
		"/key":              e.vkey + "\n",
		"/index/rcpt-nope":  "404",
		"/.state/treeState": "404",
		"/tile/../index.db": "404",
		"/tile/":            "404",
		"/tile/0":           "404",
	} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := string(b); (want == "404" && resp.StatusCode != 404) || (want != "404" && got != want) {
			t.Errorf("GET %s: %d %q, want %q", path, resp.StatusCode, got, want)
		}
	}

	// Restarted, it keeps its tree and index: a replay is not logged again.
	stop()
	s, _ = e.start(t)
	srv2 := httptest.NewServer(s.Handler())
	defer srv2.Close()
	next, id := e.result(t, "acme", nil)
	e.produce(t, replay(recs[0]), next)
	kafkatest.WaitCommitted(t, e.adm, e.cfg.Group, e.topics.Receipts, int64(len(recs)+2), 20*time.Second)
	e.checkpoint(t, srv2, 6)
	if at, ok := s.Index(id); !ok || at != 5 {
		t.Fatalf("the new receipt is leaf %d %v, want 5", at, ok)
	}
}

// replay is a copy of rec, produced again.
func replay(rec *kgo.Record) *kgo.Record {
	return &kgo.Record{Topic: rec.Topic, Key: rec.Key, Value: rec.Value}
}

func must(at uint64, ok bool) uint64 {
	if !ok {
		panic("not logged")
	}
	return at
}
