package ingest

import (
	"testing"
	"time"

	"github.com/certnode/certnode/schemas"
)

func testJob(t *testing.T) *jobState {
	t.Helper()
	return newJobState(schemas.Job{V: 1, ID: "job_1", Tenant: "acme", Kind: schemas.KindSign, State: schemas.JobUploading,
		Nonce: "AAAAAAAAAAAAAAAAAAAAAA"}, []byte("line key of job_1"), true)
}

func lineResult(j *jobState, line int64, status schemas.Status) *schemas.Result {
	return &schemas.Result{V: 1, ID: lineID(j.lineKey, j.meta.ID, line), Tenant: j.meta.Tenant, Kind: j.meta.Kind,
		Status: status, Auth: schemas.AuthIngest, JobID: j.meta.ID, Line: line, ProcessedAt: time.Unix(100+line, 0)}
}

func TestJobCountsOnlyItsOwnLines(t *testing.T) {
	j := testJob(t)
	forged := lineResult(j, 2, schemas.StatusFailed)
	forged.ID = "req_guessed"
	foreign := lineResult(j, 3, schemas.StatusSigned)
	foreign.Tenant = "globex"
	for name, c := range map[string]struct {
		res  *schemas.Result
		want string
	}{
		"forged id":      {forged, "unknown_request"},
		"other tenant":   {foreign, "foreign"},
		"line too large": {lineResult(j, 4611686018427387904, schemas.StatusSigned), "line_out_of_range"},
		"line negative":  {lineResult(j, -1, schemas.StatusSigned), "line_out_of_range"},
	} {
		if ok, why := j.count(c.res, 1000); ok || why != c.want {
			t.Errorf("%s: counted %v (%q), want refused as %q", name, ok, why, c.want)
		}
	}
	if len(j.seen) != 0 {
		t.Fatalf("refused results grew the job's state to %d words", len(j.seen))
	}
	if ok, _ := j.count(lineResult(j, 1, schemas.StatusSigned), 1000); !ok {
		t.Fatal("a genuine result was refused")
	}
	if ok, why := j.count(lineResult(j, 1, schemas.StatusFailed), 1000); ok || why != "" {
		t.Fatalf("a redelivered result counted (%q)", why)
	}
}

// TestJobUploadRace: a result may arrive before ingest learns whether its
// line's produce succeeded; lines that end up refused do not count, and
// the job is done exactly when every accepted line has a result.
func TestJobUploadRace(t *testing.T) {
	j := testJob(t)
	for _, l := range []int64{1, 2, 4} {
		j.count(lineResult(j, l, schemas.StatusSigned), 1000)
	}
	// Line 2's produce was reported failed (yet its record got through),
	// line 3 was blank, line 5 is accepted and still running.
	meta := j.meta
	meta.State, meta.LinesRead, meta.Total = schemas.JobRunning, 5, 3
	meta.Rejected = []schemas.RejectedLine{{Line: 2, Code: "kafka_unavailable"}}
	meta.Skipped = []schemas.LineRange{{From: 3, To: 3}}
	j.uploaded(meta)
	if j.meta.Done != 2 || j.meta.Valid != 2 || j.complete() {
		t.Fatalf("after upload: %+v", j.meta)
	}
	if ok, why := j.count(lineResult(j, 3, schemas.StatusSigned), 1000); ok || why != "not_accepted" {
		t.Fatalf("a blank line's result counted (%q)", why)
	}
	j.count(lineResult(j, 5, schemas.StatusInvalid), 1000)
	if !j.complete() || j.meta.State != schemas.JobDone || j.meta.Done != 3 || j.meta.Invalid != 1 {
		t.Fatalf("not done: %+v", j.meta)
	}
	if want := time.Unix(105, 0).UTC(); !j.meta.FinishedAt.Equal(want) {
		t.Fatalf("finished at %v, want the last result's time %v", j.meta.FinishedAt, want)
	}
	if j.seen != nil {
		t.Fatal("a done job keeps its per-line state")
	}
}

func TestLineIndex(t *testing.T) {
	meta := schemas.Job{Rejected: []schemas.RejectedLine{{Line: 4}}, Skipped: []schemas.LineRange{{From: 2, To: 3}, {From: 7, To: 9}}}
	x := newLineIndex(&meta)
	want := map[int64]lineOutcome{1: lineAccepted, 2: lineSkipped, 3: lineSkipped, 4: lineRejected, 5: lineAccepted, 7: lineSkipped, 9: lineSkipped, 10: lineAccepted}
	for line, w := range want {
		if got, _ := x.outcome(line); got != w {
			t.Errorf("line %d: %v, want %v", line, got, w)
		}
	}
}

type fakeDeriver map[string][]byte

func (d fakeDeriver) Derive(kid string, label []byte) ([]byte, bool) {
	secret, ok := d[kid]
	if !ok {
		return nil, false
	}
	return append(append([]byte(nil), secret...), label...), true
}

// TestJobLineKeyNeedsTheSecret: what the jobs topic holds (nonce, key id)
// is not enough to make line ids; without the named secret no result
// counts.
func TestJobLineKeyNeedsTheSecret(t *testing.T) {
	meta := schemas.Job{V: 1, ID: "job_1", Tenant: "acme", Kind: schemas.KindSign, State: schemas.JobUploading,
		Nonce: "AAAAAAAAAAAAAAAAAAAAAA", KeyID: "k1"}
	ours := jobLineKey(fakeDeriver{"k1": []byte("secret one")}, &meta)
	theirs := jobLineKey(fakeDeriver{"k1": []byte("another secret")}, &meta)
	if ours == nil || lineID(ours, meta.ID, 1) == lineID(theirs, meta.ID, 1) {
		t.Fatal("line ids do not depend on the internal secret")
	}
	unknown := newJobState(meta, jobLineKey(fakeDeriver{"k2": []byte("x")}, &meta), false)
	res := &schemas.Result{V: 1, ID: lineID(ours, meta.ID, 1), Tenant: "acme", Kind: schemas.KindSign,
		Status: schemas.StatusSigned, Auth: schemas.AuthIngest, JobID: meta.ID, Line: 1}
	if ok, why := unknown.count(res, 10); ok || why != "unknown_request" {
		t.Fatalf("counted without the job's secret: %v %q", ok, why)
	}
	if known := newJobState(meta, ours, false); !func() bool { ok, _ := known.count(res, 10); return ok }() {
		t.Fatal("a genuine result was refused")
	}
}
