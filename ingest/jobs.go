package ingest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/certnode/certnode/schemas"
)

// lineID derives the request id of a bulk job's line with the job's line
// key, which only holders of the internal secret can compute (jobLineKey):
// a result whose id matches answers a record ingest produced for that line,
// so a record forged into certnode.requests cannot add to or confuse
// another job's counts, even by someone who reads certnode.jobs.
func lineID(key []byte, jobID string, line int64) string {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(jobID))
	h.Write([]byte{'\n'})
	h.Write(strconv.AppendInt(nil, line, 10))
	return "req_" + base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:16])
}

// bitset records lines. It grows only to the highest line added, and
// callers add only lines proven genuine (lineID), so a number in a record
// cannot make it large.
type bitset []uint64

func (b *bitset) add(i int64) bool {
	w := int(i / 64)
	if w >= len(*b) {
		*b = append(*b, make([]uint64, w-len(*b)+1)...)
	}
	mask := uint64(1) << (i % 64)
	if (*b)[w]&mask != 0 {
		return false
	}
	(*b)[w] |= mask
	return true
}

func (b bitset) has(i int64) bool {
	w := int(i / 64)
	return i >= 0 && w < len(b) && b[w]&(uint64(1)<<(i%64)) != 0
}

// jobState is a job as this process knows it: the latest record from the
// jobs topic (or its own upload) and the results counted so far.
type jobState struct {
	meta schemas.Job
	// lineKey derives the job's line ids (nil: its internal secret is not
	// configured here, and no result can be checked).
	lineKey []byte
	// owner: this process ran the upload (or answered the 504); it writes
	// the job's records first, others follow them.
	owner bool
	// seen, valid and invalid record counted lines (failed = seen minus
	// the other two); dropped once the job is done.
	seen, valid, invalid bitset
	index                *lineIndex // once the upload is complete
	lastProcessed        time.Time
	// doneWritten: a done record is on the topic (written or read).
	doneWritten bool
	// writeMu orders this job's records on the topic.
	writeMu sync.Mutex
	changed chan struct{} // closed and replaced on every change
}

func newJobState(meta schemas.Job, lineKey []byte, owner bool) *jobState {
	j := &jobState{meta: meta, lineKey: lineKey, owner: owner, changed: make(chan struct{})}
	j.doneWritten = meta.State == schemas.JobDone
	if meta.State == schemas.JobRunning {
		j.index = newLineIndex(&j.meta)
	}
	return j
}

func (j *jobState) notify() {
	close(j.changed)
	j.changed = make(chan struct{})
}

// lineOutcome says what became of one input line at upload.
type lineOutcome int

const (
	lineAccepted lineOutcome = iota
	lineRejected
	lineSkipped // blank
)

// lineIndex answers, for a job whose upload is complete, what became of
// each line, without scanning the job's lists per line.
type lineIndex struct {
	rejected map[int64]*schemas.RejectedLine
	skipped  []schemas.LineRange // sorted, disjoint
}

func newLineIndex(meta *schemas.Job) *lineIndex {
	x := &lineIndex{rejected: make(map[int64]*schemas.RejectedLine, len(meta.Rejected)), skipped: meta.Skipped}
	for i := range meta.Rejected {
		x.rejected[meta.Rejected[i].Line] = &meta.Rejected[i]
	}
	return x
}

func (x *lineIndex) outcome(line int64) (lineOutcome, *schemas.RejectedLine) {
	if r, ok := x.rejected[line]; ok {
		return lineRejected, r
	}
	i := sort.Search(len(x.skipped), func(i int) bool { return x.skipped[i].To >= line })
	if i < len(x.skipped) && x.skipped[i].From <= line {
		return lineSkipped, nil
	}
	return lineAccepted, nil
}

// count adds one result to a bulk job, after checking that it belongs
// there; it reports whether it counted.
func (j *jobState) count(res *schemas.Result, maxLine int64) (bool, string) {
	m := &j.meta
	bound := maxLine
	if m.State != schemas.JobUploading {
		bound = m.LinesRead
	}
	switch {
	case res.Tenant != m.Tenant || res.Kind != m.Kind:
		return false, "foreign"
	case res.Line < 1 || res.Line > bound:
		return false, "line_out_of_range"
	case j.lineKey == nil || res.ID != lineID(j.lineKey, m.ID, res.Line):
		return false, "unknown_request"
	}
	if m.State == schemas.JobDone {
		return false, "" // counted already: a redelivered result
	}
	if j.index != nil {
		if o, _ := j.index.outcome(res.Line); o != lineAccepted {
			return false, "not_accepted"
		}
	}
	if !j.seen.add(res.Line) {
		return false, "" // a redelivered result
	}
	m.Done++
	switch res.Status {
	case schemas.StatusSigned, schemas.StatusValid:
		m.Valid++
		j.valid.add(res.Line)
	case schemas.StatusInvalid:
		m.Invalid++
		j.invalid.add(res.Line)
	default:
		m.Failed++
	}
	if res.ProcessedAt.After(j.lastProcessed) {
		j.lastProcessed = res.ProcessedAt
	}
	return true, ""
}

// uploaded applies the end of the upload: results counted for lines that
// turned out not accepted (their produce was reported failed, yet reached
// the broker) are taken back out.
func (j *jobState) uploaded(meta schemas.Job) {
	done, valid, invalid, failed := j.meta.Done, j.meta.Valid, j.meta.Invalid, j.meta.Failed
	j.meta = meta
	j.meta.Done, j.meta.Valid, j.meta.Invalid, j.meta.Failed = done, valid, invalid, failed
	j.index = newLineIndex(&j.meta)
	for _, r := range meta.Rejected {
		if !j.seen.has(r.Line) {
			continue
		}
		j.meta.Done--
		switch {
		case j.valid.has(r.Line):
			j.meta.Valid--
		case j.invalid.has(r.Line):
			j.meta.Invalid--
		default:
			j.meta.Failed--
		}
	}
}

// complete marks a running job done when every accepted line has its
// result; the finish time comes from the records, the same on every process.
func (j *jobState) complete() bool {
	m := &j.meta
	if m.State != schemas.JobRunning || m.Done < m.Total {
		return false
	}
	// A job ends when its upload and its last result have (results can
	// come before the upload's record was written).
	m.State, m.FinishedAt = schemas.JobDone, j.lastProcessed.UTC()
	if m.UploadedAt.After(m.FinishedAt) {
		m.FinishedAt = m.UploadedAt
	}
	j.seen, j.valid, j.invalid, j.index = nil, nil, nil, nil
	return true
}

// view is the job as callers see it: an upload that outlived its deadline
// was abandoned.
func (j *jobState) view(now time.Time, uploadLimit time.Duration) schemas.Job {
	v := j.meta
	if v.State == schemas.JobUploading && now.Sub(v.CreatedAt) > uploadLimit {
		v.State = schemas.JobAbandoned
	}
	return v
}

// keyDeriver derives keys from the internal secret (recordauth.Keyring).
type keyDeriver interface {
	Derive(kid string, label []byte) ([]byte, bool)
}

// jobLineKey is the key of a job's line ids.
func jobLineKey(d keyDeriver, meta *schemas.Job) []byte {
	nonce, err := base64.RawURLEncoding.DecodeString(meta.Nonce)
	if err != nil || len(nonce) == 0 {
		return nil
	}
	key, _ := d.Derive(meta.KeyID, append([]byte("certnode-job-lines\n"), nonce...))
	return key
}
