package transparency

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/transparency-dev/formats/log"

	"github.com/certnode/certnode/schemas"
)

// A monitor's findings: the log showed two trees that cannot both be true.
var (
	// ErrFork: a checkpoint of the same size with another root, or a
	// larger tree that does not extend the one seen before.
	ErrFork = errors.New("transparency: the log forked")
	// ErrRewound: a checkpoint of fewer leaves than one seen before.
	ErrRewound = errors.New("transparency: the log's tree went back")
)

// MonitorConfig configures a Monitor.
type MonitorConfig struct {
	// URL is the API that serves /v1/log/checkpoint and
	// /v1/log/consistency (ingest).
	URL string
	// VerifierKey checks the checkpoints: obtained out of band, never from
	// the log being watched.
	VerifierKey string
	// StateFile keeps the last checkpoint seen, so that a restarted
	// monitor still notices a rewound tree ("": none kept).
	StateFile string
	// Interval between polls (default 2s).
	Interval time.Duration
	HTTP     *http.Client
	Logger   *slog.Logger
}

// Monitor follows a log's checkpoints and checks each new one extends the
// last: larger trees by a consistency proof, the same size by the same
// root; a smaller tree or a fork is an error.
type Monitor struct {
	cfg     MonitorConfig
	base    *url.URL
	last    *log.Checkpoint
	lastRaw []byte
}

// NewMonitor checks cfg and reads the state file, if any.
func NewMonitor(cfg MonitorConfig) (*Monitor, error) {
	base, err := url.Parse(strings.TrimSuffix(cfg.URL, "/") + "/")
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") {
		return nil, fmt.Errorf("transparency: the API's URL %q: want http(s)://host:port", cfg.URL)
	}
	if cfg.VerifierKey == "" {
		return nil, errors.New("transparency: the log's verifier key is required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 2 * time.Second
	}
	if cfg.HTTP == nil {
		cfg.HTTP = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m := &Monitor{cfg: cfg, base: base}
	if cfg.StateFile != "" {
		raw, err := os.ReadFile(cfg.StateFile)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("transparency: the monitor's state: %w", err)
		default:
			if m.last, err = OpenCheckpoint(raw, cfg.VerifierKey); err != nil {
				return nil, fmt.Errorf("transparency: the monitor's state %s: %w", cfg.StateFile, err)
			}
			m.lastRaw = raw
		}
	}
	return m, nil
}

func (m *Monitor) get(ctx context.Context, path string, query url.Values) ([]byte, error) {
	u := m.base.JoinPath(path)
	u.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(ctx, "GET", u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := m.cfg.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %d %s", path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return b, err
}

// Observation is what one poll saw.
type Observation struct {
	// Size and Previous are the tree sizes now and at the last poll (0:
	// the first).
	Size, Previous uint64
	// Proved: a consistency proof from Previous to Size was checked.
	Proved bool
}

// Check polls once: the latest checkpoint, checked against the key and
// the last one seen. ErrFork and ErrRewound are the log's misbehaviour,
// proved by checkpoints its key signed; other errors (unreachable, an
// answer that is no signed checkpoint or no proof) prove nothing.
func (m *Monitor) Check(ctx context.Context) (Observation, error) {
	raw, err := m.get(ctx, "v1/log/checkpoint", nil)
	if err != nil {
		return Observation{}, fmt.Errorf("transparency: the checkpoint: %w", err)
	}
	cp, err := OpenCheckpoint(raw, m.cfg.VerifierKey)
	if err != nil {
		// Not the log's checkpoint (a proxy's page, another log): it
		// proves nothing either way.
		return Observation{}, fmt.Errorf("transparency: the answer is no checkpoint of this log: %v", err)
	}
	obs := Observation{Size: cp.Size}
	if m.last != nil {
		obs.Previous = m.last.Size
		switch {
		case cp.Size < m.last.Size:
			return obs, fmt.Errorf("%w: %d leaves after %d\nbefore:\n%s\nnow:\n%s", ErrRewound, cp.Size, m.last.Size, m.lastRaw, raw)
		case cp.Size == m.last.Size && !sameTree(cp, m.last):
			return obs, fmt.Errorf("%w: two roots for %d leaves\nbefore:\n%s\nnow:\n%s", ErrFork, cp.Size, m.lastRaw, raw)
		case cp.Size > m.last.Size && m.last.Size > 0:
			b, err := m.get(ctx, "v1/log/consistency", url.Values{"from": {strconv.FormatUint(m.last.Size, 10)}, "to": {strconv.FormatUint(cp.Size, 10)}})
			if err != nil {
				return obs, fmt.Errorf("transparency: the consistency proof: %w", err)
			}
			var p schemas.ConsistencyProof
			if err := json.Unmarshal(b, &p, json.RejectUnknownMembers(false)); err != nil {
				return obs, fmt.Errorf("transparency: the consistency proof: %w", err)
			}
			if p.From != m.last.Size || p.To != cp.Size {
				return obs, fmt.Errorf("transparency: asked a proof of %d..%d, got %d..%d", m.last.Size, cp.Size, p.From, p.To)
			}
			if _, err := decodeHashes(p.Hashes); err != nil {
				return obs, fmt.Errorf("transparency: a malformed consistency proof: %v", err) // not a proof at all
			}
			if err := VerifyConsistency(m.last, cp, p.Hashes); err != nil {
				return obs, fmt.Errorf("%w: %v\nbefore:\n%s\nnow:\n%s", ErrFork, err, m.lastRaw, raw)
			}
			obs.Proved = true
		}
	}
	m.last, m.lastRaw = cp, raw
	if m.cfg.StateFile != "" {
		if err := writeAtomic(m.cfg.StateFile, raw); err != nil {
			return obs, fmt.Errorf("transparency: the monitor's state: %w", err)
		}
	}
	return obs, nil
}

// Run polls until ctx ends, or the log misbehaves (ErrFork, ErrRewound).
// Failures to reach the log are logged and retried.
func (m *Monitor) Run(ctx context.Context) error {
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	for {
		obs, err := m.Check(ctx)
		switch {
		case errors.Is(err, ErrFork) || errors.Is(err, ErrRewound):
			return err
		case err != nil:
			m.cfg.Logger.Warn("log monitor: cannot check the log", "err", err)
		case obs.Size != obs.Previous:
			m.cfg.Logger.Info("log monitor: checkpoint", "size", obs.Size, "previous", obs.Previous, "consistent", obs.Proved || obs.Previous == 0)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func writeAtomic(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".monitor-*")
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err = errors.Join(err, f.Sync(), f.Close()); err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}
