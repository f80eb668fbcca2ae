// Package translog keeps the service's append-only Merkle logs (RFC 6962
// hashing), appended by transparency-dev/tessera, whose POSIX driver
// writes them as C2SP tlog-tiles with a checkpoint signed as a C2SP note
// every second. The files are static: Handler serves them, with an index
// from each leaf's id to its index.
//
// Two logs share the code, one process and directory each (Kind):
//   - the transparency log of receipts: every receipt the service signed,
//     read from certnode.receipts, as schemas.ReceiptLeaf, a hash of the
//     receipt. One log serves the deployment: it holds no organization's
//     data, one HSM signature a second covers every organization, and a
//     monitor follows one tree.
//   - the audit log: every audit event of every role, read from
//     certnode.audit, as schemas.AuditLeaf (the event's hash, its
//     organization's tag and its time), with an index of append times that
//     tells an organization's export where its window starts.
package translog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/storage/posix"
	"github.com/twmb/franz-go/pkg/kgo"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/mod/sumdb/note"

	"github.com/certnode/certnode/internal/kafka"
	"github.com/certnode/certnode/schemas"
)

// Kind is what a log holds.
type Kind string

// The logs.
const (
	Receipts Kind = "receipts"
	Audit    Kind = "audit"
)

// Config configures the log.
type Config struct {
	Kind  Kind
	Kafka kafka.Config
	Group string
	// Dir holds the tree (tiles, entry bundles, checkpoint) under log/ and
	// the index in index.db.
	Dir string
	// Signer signs the checkpoints; its name is the log's origin. VerifierKey
	// is its note verifier key, served at /key.
	Signer      note.Signer
	VerifierKey string
	// CheckpointInterval is how often a grown tree gets a new checkpoint
	// (default 1s; at least 100ms).
	CheckpointInterval time.Duration
	// MAC authenticates audit records and keys the organizations' tags
	// (recordauth.Keyring); the audit log needs it.
	MAC AuditMAC
	// BatchRecords bounds the results appended, and committed, at once.
	BatchRecords int
	// AttemptTimeout bounds each append and offset commit; a failed one
	// is retried with backoff.
	AttemptTimeout time.Duration
	// Registerer receives the log's metrics (nil: not registered).
	Registerer prometheus.Registerer
}

// AuditMAC checks the records of certnode.audit and derives the key of
// the organizations' tags.
type AuditMAC interface {
	Check(value []byte, header string) error
	SignKeyID() string
	Derive(kid string, label []byte) ([]byte, bool)
}

// DefaultConfig returns a config with every field but the brokers, the
// directory and the signer set.
func DefaultConfig() Config {
	return Config{Kind: Receipts, Kafka: kafka.Config{Partitions: 8, ReplicationFactor: 1}, Group: "certnode-translog",
		CheckpointInterval: time.Second, BatchRecords: 5000, AttemptTimeout: time.Minute}
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if err := c.Kafka.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Kind != Receipts && c.Kind != Audit {
		errs = append(errs, fmt.Errorf("translog: kind %q: want receipts or audit", c.Kind))
	}
	if c.Kind == Audit && c.MAC == nil {
		errs = append(errs, errors.New("translog: the audit log needs the internal secret"))
	}
	if c.Group == "" || c.Dir == "" {
		errs = append(errs, errors.New("translog: group and directory are required"))
	}
	if c.Signer == nil || c.VerifierKey == "" {
		errs = append(errs, errors.New("translog: a checkpoint signer and its verifier key are required"))
	}
	if c.CheckpointInterval < 100*time.Millisecond {
		errs = append(errs, errors.New("translog: the checkpoint interval must be at least 100ms"))
	}
	if c.BatchRecords < 1 || c.AttemptTimeout <= 0 {
		errs = append(errs, errors.New("translog: batch records and attempt timeout must be positive"))
	}
	return errors.Join(errs...)
}

// Why a record is not appended (label of certnode_translog_skipped_total).
const (
	SkipNotSigned = "not_signed" // a verification, or a failed sign
	SkipLogged    = "logged"     // its receipt or event is in the log already
	SkipBadRecord = "bad_record" // not a result or event, or keyed by another organization
)

type metrics struct {
	appended  prometheus.Counter
	skipped   *prometheus.CounterVec
	integrate prometheus.Histogram
	size      prometheus.Gauge
}

func newMetrics() metrics {
	m := metrics{
		appended: prometheus.NewCounter(prometheus.CounterOpts{Name: "certnode_translog_appended_total",
			Help: "Leaves appended to the log."}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "certnode_translog_skipped_total",
			Help: "Records not appended, by reason."}, []string{"reason"}),
		integrate: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "certnode_translog_integrate_seconds",
			Help:    "From a receipt's signing, or an event, to its leaf in the tree (a checkpoint follows within the interval).",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14)}),
		size: prometheus.NewGauge(prometheus.GaugeOpts{Name: "certnode_translog_tree_size",
			Help: "Leaves in the tree."}),
	}
	for _, r := range []string{SkipNotSigned, SkipLogged, SkipBadRecord} {
		m.skipped.WithLabelValues(r)
	}
	return m
}

// The index's buckets: leaf ids (receipt ids, or audit event ids) to leaf
// indexes, and (audit log) the first leaf appended in each minute.
var (
	indexBucket    = []byte("receipts")
	appendedBucket = []byte("appended")
)

// Sink appends receipts or audit events to the log.
type Sink struct {
	cfg      Config
	topic    string
	cl       *kgo.Client
	app      *tessera.Appender
	shutdown func(context.Context) error
	stop     context.CancelFunc // the appender's context
	db       *bolt.DB
	size     uint64 // the largest leaf index appended here, plus one
	// The audit log's organization tags are keyed under tagKID.
	tagKID   string
	tagKey   []byte
	appended time.Time // the latest append time a leaf states
	log      *slog.Logger
	m        metrics
}

// New opens the log in cfg.Dir and joins the consumer group.
func New(ctx context.Context, cfg Config, opts ...kgo.Opt) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "log"), 0o755); err != nil {
		return nil, fmt.Errorf("translog: %w", err)
	}
	topic := cfg.Kafka.Topics().Receipts
	if cfg.Kind == Audit {
		topic = cfg.Kafka.Topics().Audit
	}
	s := &Sink{cfg: cfg, topic: topic, log: slog.With("role", "translog", "log", cfg.Kind), m: newMetrics()}
	if cfg.Kind == Audit {
		s.tagKID = cfg.MAC.SignKeyID()
		s.tagKey, _ = cfg.MAC.Derive(s.tagKID, []byte(schemas.AuditTagLabel))
	}
	var err error
	if s.db, err = bolt.Open(filepath.Join(cfg.Dir, "index.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second}); err != nil {
		return nil, fmt.Errorf("translog: index (is another log running on %s?): %w", cfg.Dir, err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(indexBucket)
		if err == nil {
			_, err = tx.CreateBucketIfNotExists(appendedBucket)
		}
		return err
	}); err != nil {
		s.db.Close()
		return nil, fmt.Errorf("translog: index: %w", err)
	}
	// The appender's goroutines outlive Run, whose last batch they
	// integrate; Close stops them.
	ctx, s.stop = context.WithCancel(context.WithoutCancel(ctx))
	drv, err := posix.New(ctx, posix.Config{Path: filepath.Join(cfg.Dir, "log")})
	var reader tessera.LogReader
	if err == nil {
		s.app, s.shutdown, reader, err = tessera.NewAppender(ctx, drv, tessera.NewAppendOptions().
			WithCheckpointSigner(cfg.Signer).
			WithCheckpointInterval(cfg.CheckpointInterval).
			WithBatching(1024, 50*time.Millisecond).
			WithAntispam(tessera.DefaultAntispamInMemorySize, nil))
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("translog: %w", err)
	}
	if s.cl, err = kafka.NewClient(cfg.Kafka, append(kafka.GroupConsumer(cfg.Group, topic), opts...)...); err != nil {
		s.Close()
		return nil, err
	}
	if n, err := reader.IntegratedSize(ctx); err == nil {
		s.size = n
		s.m.size.Set(float64(n))
	}
	if cfg.Registerer != nil {
		prometheus.WrapRegistererWith(prometheus.Labels{"log": string(cfg.Kind)}, cfg.Registerer).MustRegister(s.m.appended, s.m.skipped, s.m.integrate, s.m.size)
	}
	return s, nil
}

// Run appends until ctx ends; the batch in hand is appended and committed
// first.
func (s *Sink) Run(ctx context.Context) error {
	return kafka.EachBatch(ctx, s.cl, s.cfg.BatchRecords, s.log, func(work context.Context, recs []*kgo.Record) error {
		return s.append(work, ctx, recs)
	})
}

// entry is a leaf to append: a receipt's or an event's.
type entry struct {
	id, org string
	leaf    []byte
	at      time.Time // the receipt's signing, the event's time
}

// entries picks the leaves of recs not logged yet, each once.
func (s *Sink) entries(recs []*kgo.Record) ([]entry, error) {
	var out []entry
	seen := map[string]bool{}
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(indexBucket)
		for _, rec := range recs {
			e, skip, err := s.entry(rec)
			switch {
			case err != nil:
				s.m.skipped.WithLabelValues(SkipBadRecord).Inc()
				s.log.Warn("record skipped", "partition", rec.Partition, "offset", rec.Offset, "err", err)
			case skip != "":
				s.m.skipped.WithLabelValues(skip).Inc()
			case seen[e.id] || b.Get([]byte(e.id)) != nil:
				s.m.skipped.WithLabelValues(SkipLogged).Inc()
			default:
				seen[e.id] = true
				out = append(out, e)
			}
		}
		return nil
	})
	return out, err
}

// entry reads the leaf of rec, or why it has none.
func (s *Sink) entry(rec *kgo.Record) (entry, string, error) {
	if s.cfg.Kind == Audit {
		if err := s.cfg.MAC.Check(rec.Value, kafka.Header(rec, schemas.HeaderIngestMAC)); err != nil {
			return entry{}, "", err
		}
		ev, canon, err := schemas.DecodeAuditEvent(rec.Value)
		if err == nil && string(rec.Key) != ev.Org {
			err = fmt.Errorf("record key %q, event organization %q", rec.Key, ev.Org)
		}
		if err == nil {
			err = schemas.CheckAuditTime(ev.At, rec.Timestamp)
		}
		if err != nil {
			return entry{}, "", err
		}
		// Leaves state their append times in index order: the time never
		// goes back, whatever the clock does.
		if now := time.Now(); now.After(s.appended) {
			s.appended = now
		}
		tag := schemas.AuditOrgTag(s.tagKID, s.tagKey, ev.Org)
		return entry{id: ev.ID, org: ev.Org, leaf: schemas.AuditLeaf(tag, ev.At, s.appended, canon), at: ev.At}, "", nil
	}
	res, err := schemas.DecodeResult(rec.Value)
	if err == nil && string(rec.Key) != res.Tenant {
		err = fmt.Errorf("record key %q, result tenant %q", rec.Key, res.Tenant)
	}
	switch {
	case err != nil:
		return entry{}, "", err
	case res.Kind != schemas.KindSign || res.Status != schemas.StatusSigned || res.ReceiptID == "":
		return entry{}, SkipNotSigned, nil
	}
	signed, _ := schemas.TrustedTime(res.ProcessedAt, rec.Timestamp)
	return entry{id: res.ReceiptID, org: res.Tenant, leaf: schemas.ReceiptLeaf(res.ReceiptID), at: signed}, "", nil
}

// append logs the leaves of recs, records them in the index and commits
// recs, retrying each step until it succeeds. It gives up only
// when stop ends and a step keeps failing, leaving the offsets
// uncommitted: the next run appends what was not indexed (a crash between
// the tree and the index appends a leaf twice, harmlessly: a receipt's
// proof names the second, and an export's check matches an event to
// either).
func (s *Sink) append(ctx, stop context.Context, recs []*kgo.Record) error {
	es, err := s.entries(recs)
	if err != nil {
		return err
	}
	idx := make([]uint64, len(es))
	if err := kafka.Retry(stop, s.log, "append", func() error {
		actx, cancel := context.WithTimeout(ctx, s.cfg.AttemptTimeout)
		defer cancel()
		futures := make([]tessera.IndexFuture, len(es))
		for i, e := range es {
			// A retry adds the same leaves: the appender knows them.
			futures[i] = s.app.Add(actx, tessera.NewEntry(e.leaf))
		}
		for i, f := range futures {
			at, err := await(actx, f)
			if err != nil {
				return err
			}
			idx[i] = at.Index
		}
		return nil
	}); err != nil {
		return err
	}
	now := time.Now()
	if err := kafka.Retry(stop, s.log, "index", func() error {
		return s.db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(indexBucket)
			first := uint64(math.MaxUint64)
			for i, e := range es {
				first = min(first, idx[i])
				if b.Get([]byte(e.id)) != nil {
					continue
				}
				if err := b.Put([]byte(e.id), binary.BigEndian.AppendUint64(nil, idx[i])); err != nil {
					return err
				}
			}
			if len(es) == 0 {
				return nil
			}
			// The minute's first leaf: leaves appended after it come
			// later in the tree.
			t := tx.Bucket(appendedBucket)
			minute := binary.BigEndian.AppendUint64(nil, uint64(now.Unix()/60))
			if t.Get(minute) == nil {
				return t.Put(minute, binary.BigEndian.AppendUint64(nil, first))
			}
			return nil
		})
	}); err != nil {
		return err
	}
	for i, e := range es {
		s.m.appended.Inc()
		s.m.integrate.Observe(now.Sub(e.at).Seconds())
		s.size = max(s.size, idx[i]+1)
	}
	s.m.size.Set(float64(s.size))
	return kafka.Commit(ctx, stop, s.cl, s.log, s.cfg.AttemptTimeout, recs) // a new owner finds them in the index
}

// await waits for an entry's leaf until ctx ends: a future has no
// deadline of its own.
func await(ctx context.Context, f tessera.IndexFuture) (tessera.Index, error) {
	type answer struct {
		at  tessera.Index
		err error
	}
	ch := make(chan answer, 1)
	go func() { at, err := f(); ch <- answer{at, err} }()
	select {
	case a := <-ch:
		return a.at, a.err
	case <-ctx.Done():
		return tessera.Index{}, fmt.Errorf("translog: waiting for a leaf: %w", ctx.Err())
	}
}

// Index returns a logged receipt's or event's leaf index.
func (s *Sink) Index(id string) (uint64, bool) {
	var at uint64
	var ok bool
	s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(indexBucket).Get([]byte(id)); len(v) == 8 {
			at, ok = binary.BigEndian.Uint64(v), true
		}
		return nil
	})
	return at, ok
}

// Since returns the first leaf appended at or after t's minute; ok false
// when none was (the leaves to come will be).
func (s *Sink) Since(t time.Time) (uint64, bool) {
	var at uint64
	var ok bool
	s.db.View(func(tx *bolt.Tx) error {
		_, v := tx.Bucket(appendedBucket).Cursor().Seek(binary.BigEndian.AppendUint64(nil, uint64(max(t.Unix(), 0)/60)))
		if len(v) == 8 {
			at, ok = binary.BigEndian.Uint64(v), true
		}
		return nil
	})
	return at, ok
}

// Handler serves the log: the tlog-tiles files (checkpoint, tile/...,
// tile/entries/...), the checkpoint's verifier key at /key, and for
// ingest /index/{id} ({"index": n}, a receipt's or event's leaf) and
// /since/{unix seconds} ({"index": n}, the first leaf appended then or
// later; 404 when none was). Full tiles never change;
// the checkpoint and partial tiles do.
func (s *Sink) Handler() http.Handler {
	root := filepath.Join(s.cfg.Dir, "log")
	files := http.FileServer(http.Dir(root))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /key", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, s.cfg.VerifierKey)
	})
	index := func(w http.ResponseWriter, at uint64, ok bool, missing string) {
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			json.MarshalWrite(w, map[string]map[string]string{"error": {"code": "not_found", "message": missing}})
			return
		}
		json.MarshalWrite(w, map[string]uint64{"index": at})
	}
	mux.HandleFunc("GET /index/{id}", func(w http.ResponseWriter, r *http.Request) {
		at, ok := s.Index(r.PathValue("id"))
		index(w, at, ok, "no such leaf in the log")
	})
	mux.HandleFunc("GET /since/{unix}", func(w http.ResponseWriter, r *http.Request) {
		t, err := strconv.ParseInt(r.PathValue("unix"), 10, 64)
		if err != nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":{"code":"invalid_time","message":"want unix seconds"}}`+"\n")
			return
		}
		at, ok := s.Since(time.Unix(t, 0))
		index(w, at, ok, "no leaf appended since then")
	})
	// The checkpoint changes within a second: read whole, never answered
	// 304 by a modification time of second precision.
	checkpoint := func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(filepath.Join(root, "checkpoint"))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write(b)
	}
	tiles := func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		if st, err := os.Stat(filepath.Join(root, filepath.FromSlash(p))); err != nil || st.IsDir() || strings.Contains(p, "/.") {
			http.NotFound(w, r) // no listings, and not the driver's private state
			return
		}
		if strings.Contains(p, ".p/") {
			w.Header().Set("Cache-Control", "no-cache") // a partial tile is completed later
		} else {
			w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		files.ServeHTTP(w, r)
	}
	mux.HandleFunc("GET /checkpoint", checkpoint)
	mux.HandleFunc("GET /tile/", tiles)
	return mux
}

// Close stops the appender (publishing what it holds), leaves the group
// and closes the index.
func (s *Sink) Close() {
	if s.cl != nil {
		s.cl.Close()
	}
	if s.shutdown != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := s.shutdown(ctx); err != nil {
			s.log.Warn("log shutdown", "err", err)
		}
		cancel()
	}
	if s.stop != nil {
		s.stop()
	}
	s.db.Close()
}
