package schemas

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// The audit log holds every admin, security and access event of every
// role (AuditEvent, on certnode.audit, each record authenticated by the
// internal secret's MAC). Events are appended to a second Merkle log (the
// receipts log's code, with AuditLeaf as the leaf) and written to
// ClickHouse (certnode.audit_events) for queries. A leaf commits to the
// event's canonical JSON by hash, with its organization's tag (keyed by
// the internal secret, so that no one else can tell an organization's
// leaves), the event's time and the leaf's append time in clear. An
// organization's export can so be checked against a checkpoint: every
// leaf of its own in the window must be in the export, and every exported
// event must be a leaf (AuditExport).

// Results of an audited action.
const (
	AuditOK     = "ok"     // done
	AuditDenied = "denied" // refused: no or bad credentials, no permission
	AuditFailed = "failed" // tried and failed
	// AuditFlagged is a threat detector's finding (action security.alert).
	AuditFlagged = "flagged"
)

// Actor kinds of audit events (the coordinator's, and "address" for a
// caller that showed no credential at all).
const (
	ActorOperator  = "operator"
	ActorUser      = "user"
	ActorKey       = "key"
	ActorNode      = "node"
	ActorAnonymous = "anonymous"
	ActorDetector  = "detector"
)

// AuditActor is who acted, and from which address.
type AuditActor struct {
	Kind string `json:"kind"`
	// ID is the user, API key id, node id; for a refused key, the key's
	// prefix (never the key).
	ID   string `json:"id,omitempty"`
	Addr string `json:"addr,omitempty"`
}

// AuditEvent is one event of the audit log: who did what to which target,
// when, from where, with what result. Secrets and hashes never appear in it.
type AuditEvent struct {
	// ID is unique per event: "c-<raft index>-<unix nanos>" for the
	// coordinator's applied changes (a relay may send one twice), random
	// otherwise.
	ID     string     `json:"id"`
	At     time.Time  `json:"at"`
	Org    string     `json:"org,omitempty"` // empty: the deployment's (operator, unknown key)
	Actor  AuditActor `json:"actor"`
	Action string     `json:"action"`
	Target string     `json:"target,omitempty"`
	Result string     `json:"result"`
	// Reason is the refusal's or failure's code.
	Reason string `json:"reason,omitempty"`
	// Source is the role that saw it: coordinator, ingest, worker,
	// detector.
	Source string `json:"source"`
	// Detail says more, in words (a detector's finding).
	Detail string `json:"detail,omitempty"`
}

// Bounds of an audit event's fields.
const (
	maxAuditField      = 256
	MaxAuditEventBytes = 4 << 10
)

// Validate checks an event's shape.
func (e *AuditEvent) Validate() error {
	var errs []error
	errs = append(errs, checkToken("id", e.ID, MaxIDBytes))
	if e.Org != "" {
		errs = append(errs, checkToken("org", e.Org, MaxTenantBytes))
	}
	// The leaf keeps nanoseconds in an int64, ClickHouse seconds to 2106.
	if e.At.Year() < 2000 || e.At.Year() > 2105 {
		errs = append(errs, errors.New("at must be a time from the year 2000 to 2105"))
	}
	if e.Action == "" || e.Source == "" || e.Actor.Kind == "" {
		errs = append(errs, errors.New("action, source and actor.kind are required"))
	}
	switch e.Result {
	case AuditOK, AuditDenied, AuditFailed, AuditFlagged:
	default:
		errs = append(errs, fmt.Errorf("result %q: want ok, denied, failed or flagged", e.Result))
	}
	if len(e.Detail) > 1024 {
		errs = append(errs, errors.New("detail is longer than 1024 bytes"))
	}
	for name, v := range map[string]string{"action": e.Action, "target": e.Target, "reason": e.Reason, "source": e.Source,
		"actor.kind": e.Actor.Kind, "actor.id": e.Actor.ID, "actor.addr": e.Actor.Addr} {
		if len(v) > maxAuditField {
			errs = append(errs, fmt.Errorf("%s is longer than %d bytes", name, maxAuditField))
		}
	}
	return errors.Join(errs...)
}

// AuditRequestTarget names a request in an audit event: its method and
// path, cut to fit (a client's path may be of any length).
func AuditRequestTarget(method, path string) string {
	t := method + " " + path
	if len(t) > maxAuditField {
		t = strings.ToValidUTF8(t[:maxAuditField], "")
	}
	return t
}

// DecodeAuditEvent parses and validates a certnode.audit value, and
// returns it with its canonical form (RFC 8785), which its leaf commits to.
func DecodeAuditEvent(b []byte) (*AuditEvent, []byte, error) {
	if len(b) > MaxAuditEventBytes {
		return nil, nil, fmt.Errorf("an audit event is at most %d bytes", MaxAuditEventBytes)
	}
	var e AuditEvent
	if err := json.Unmarshal(b, &e, json.RejectUnknownMembers(true)); err != nil {
		return nil, nil, err
	}
	if err := e.Validate(); err != nil {
		return nil, nil, fmt.Errorf("not an audit event: %w", err)
	}
	canon, err := CanonicalizeObject(b)
	if err != nil {
		return nil, nil, err
	}
	return &e, canon, nil
}

// EncodeAuditEvent is the record value of e.
func EncodeAuditEvent(e *AuditEvent) ([]byte, error) {
	e.At = e.At.UTC()
	return json.Marshal(e)
}

// auditLeafPrefix versions the leaf encoding.
const auditLeafPrefix = "certnode-audit-v1\n"

// AuditTagLabel derives, from an internal secret, the key of the
// organizations' tags in the audit log's leaves.
const AuditTagLabel = "certnode-audit-org-tag"

// AuditOrgTag is org's tag under the tag key of the internal secret kid
// (key, derived with AuditTagLabel): "kid:" and the hex HMAC-SHA256 of the
// organization id. Without the key, leaves cannot be told apart by
// organization; an export names its organization's tags.
func AuditOrgTag(kid string, key []byte, org string) string {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(org))
	return kid + ":" + hex.EncodeToString(h.Sum(nil))
}

// AuditLeaf is the leaf of an event whose organization's tag is tag, of
// time at, appended at appended, whose canonical JSON is canon:
// "certnode-audit-v1\n<tag>\n<at>\n<appended>\n<hex SHA-256 of canon>",
// times in Unix nanoseconds.
func AuditLeaf(tag string, at, appended time.Time, canon []byte) []byte {
	h := sha256.Sum256(canon)
	return fmt.Appendf(nil, "%s%s\n%d\n%d\n%s", auditLeafPrefix, tag, at.UnixNano(), appended.UnixNano(), hex.EncodeToString(h[:]))
}

// AuditLeafFields are what a leaf of the audit log states.
type AuditLeafFields struct {
	OrgTag    string
	At        time.Time // the event's
	Appended  time.Time // the leaf's, by the log's clock: never before an earlier leaf's
	EventHash string    // hex SHA-256 of the event's canonical JSON
}

// ErrBadAuditLeaf: not a leaf of the audit log.
var ErrBadAuditLeaf = errors.New("not an audit log leaf")

// ParseAuditLeaf reads a leaf of the audit log.
func ParseAuditLeaf(leaf []byte) (AuditLeafFields, error) {
	rest, ok := strings.CutPrefix(string(leaf), auditLeafPrefix)
	parts := strings.Split(rest, "\n")
	if !ok || len(parts) != 4 || !isAuditTag(parts[0]) || !isHex(parts[3], 64) {
		return AuditLeafFields{}, ErrBadAuditLeaf
	}
	var times [2]time.Time
	for i, p := range parts[1:3] {
		ns, err := strconv.ParseInt(p, 10, 64)
		if err != nil || strconv.FormatInt(ns, 10) != p {
			return AuditLeafFields{}, ErrBadAuditLeaf
		}
		times[i] = time.Unix(0, ns).UTC()
	}
	return AuditLeafFields{OrgTag: parts[0], At: times[0], Appended: times[1], EventHash: parts[3]}, nil
}

// isAuditTag reports whether s is "kid:tag", 8 and 64 lower-case hex digits.
func isAuditTag(s string) bool {
	kid, tag, ok := strings.Cut(s, ":")
	return ok && isHex(kid, 8) && isHex(tag, 64)
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// AuditExportFormat names the format of an AuditExport.
const AuditExportFormat = "certnode-audit-export-v1"

// AuditExport is an organization's audit events in [From, To) with what
// proves them complete and unaltered against a signed checkpoint of the
// audit log: Left, the compact range of the leaves before FirstLeaf (the
// RFC 6962 subtree roots that cover them, left to right), and Leaves,
// every leaf from FirstLeaf to the checkpoint's size, of every
// organization. Left and Leaves rebuild the checkpoint's root. The first
// leaf was appended before From less AuditClockSkew (unless it is leaf 0),
// so no leaf before it holds an event of the window: the log appends
// leaves in time order, and refuses events timed more than AuditClockSkew
// after they reached Kafka. Each leaf of the organization (its tags are
// OrgTags) timed in the window must then be one of Events, and each event
// one of its leaves.
type AuditExport struct {
	Format     string    `json:"format"`
	Org        string    `json:"org"`
	OrgTags    []string  `json:"org_tags"`
	From       time.Time `json:"from"`
	To         time.Time `json:"to"`
	Checkpoint string    `json:"checkpoint"`
	FirstLeaf  uint64    `json:"first_leaf"`
	Left       []string  `json:"left"`   // base64 hashes
	Leaves     []string  `json:"leaves"` // the leaves' text
	// Events are the organization's events, as stored.
	Events []jsontext.Value `json:"events"`
}

// AuditClockSkew is how far an event's time may run ahead of its record's
// timestamp: the audit log, ClickHouse and the detectors refuse events
// timed later.
const AuditClockSkew = 5 * time.Minute

// CheckAuditTime refuses an event timed more than AuditClockSkew after its
// record's timestamp (when the role produced it).
func CheckAuditTime(at, record time.Time) error {
	if at.After(record.Add(AuditClockSkew)) {
		return fmt.Errorf("event time %s is more than %s after its record's %s", at.UTC().Format(time.RFC3339), AuditClockSkew, record.UTC().Format(time.RFC3339))
	}
	return nil
}
