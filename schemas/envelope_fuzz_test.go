package schemas

import (
	"bytes"
	stdjson "encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// The envelope fuzz targets check, for every input that decodes: Validate
// agrees with a restatement of the envelope rules written here, and the
// value survives json.Marshal and a second decode unchanged, validating
// the same way.

// token is the rule for ids, tenants and job ids: 1 to max bytes of
// printable ASCII without spaces.
func token(s string, max int) bool {
	if len(s) < 1 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '!' || s[i] > '~' {
			return false
		}
	}
	return true
}

// jobLine: line only with job_id, and then 1..MaxLine.
func jobLine(jobID string, line int64) bool {
	if jobID == "" {
		return line == 0
	}
	return token(jobID, 64) && line >= 1 && line <= 1<<32
}

// given: a member holds a value other than null.
func given(v []byte) bool { return len(v) > 0 && string(v) != "null" }

func requestValid(r *Request) bool {
	ok := r.V == 1 && token(r.ID, 128) && token(r.Tenant, 64) && jobLine(r.JobID, r.Line)
	switch r.Kind {
	case KindSign:
		return ok && given(r.Payload) && !given(r.Receipt) && !given(r.JWKS)
	case KindVerify:
		return ok && given(r.Receipt) && !given(r.Payload)
	}
	return false
}

func resultValid(r *Result) bool {
	return r.V == 1 && token(r.ID, 128) && token(r.Tenant, 64) && jobLine(r.JobID, r.Line) &&
		(r.Kind == KindSign || r.Kind == KindVerify) &&
		slices.Contains([]Status{StatusSigned, StatusValid, StatusInvalid, StatusFailed}, r.Status) &&
		slices.Contains([]Auth{AuthIngest, AuthProducer, AuthNone}, r.Auth) &&
		(r.Status != StatusSigned || given(r.Receipt)) && r.Size >= 0
}

func jobValid(j *Job) bool {
	return j.V == 1 && token(j.ID, 128) && token(j.Tenant, 64) &&
		(j.Kind == KindSign || j.Kind == KindVerify) &&
		slices.Contains([]JobState{JobUploading, JobRunning, JobDone, JobAbandoned}, j.State) &&
		j.Total >= 0 && j.LinesRead >= 0 && (j.Total <= j.LinesRead || j.Single) &&
		(j.Result == nil || resultValid(j.Result))
}

// sameJSON compares embedded raw values: absent stays absent (an empty
// object is not absent: omitempty once dropped "payload":{}), and
// otherwise the values must decode alike, numbers compared as written.
// (The encoder may drop whitespace and unescape strings.)
func sameJSON(a, b jsontext.Value) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	va, erra := decodeAny(a)
	vb, errb := decodeAny(b)
	return erra == nil && errb == nil && reflect.DeepEqual(va, vb)
}

func decodeAny(v []byte) (any, error) {
	dec := stdjson.NewDecoder(bytes.NewReader(v))
	dec.UseNumber()
	var x any
	err := dec.Decode(&x)
	return x, err
}

// same compares decoded envelopes field by field, so fields added later
// are compared too: raw JSON values with sameJSON, times as instants, and
// nil and empty maps and slices alike (omitempty drops both, and they mean
// the same).
func same[T any](a, b *T) bool {
	return sameValue(reflect.ValueOf(a), reflect.ValueOf(b))
}

func sameValue(a, b reflect.Value) bool {
	switch a.Type() {
	case reflect.TypeFor[jsontext.Value]():
		return sameJSON(a.Bytes(), b.Bytes())
	case reflect.TypeFor[time.Time]():
		return a.Interface().(time.Time).Equal(b.Interface().(time.Time))
	}
	switch a.Kind() {
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			return a.IsNil() == b.IsNil()
		}
		return sameValue(a.Elem(), b.Elem())
	case reflect.Struct:
		for i := range a.NumField() {
			if !sameValue(a.Field(i), b.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Slice:
		if a.Len() != b.Len() {
			return false
		}
		for i := range a.Len() {
			if !sameValue(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	case reflect.Map:
		if a.Len() != b.Len() {
			return false
		}
		for it := a.MapRange(); it.Next(); {
			if bv := b.MapIndex(it.Key()); !bv.IsValid() || !sameValue(it.Value(), bv) {
				return false
			}
		}
		return true
	}
	return a.Interface() == b.Interface()
}

// The comparison must be able to fail, or the round trips prove nothing.
func TestSameEnvelope(t *testing.T) {
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	base := func() *Job {
		return &Job{V: 1, ID: "j", Start: map[int32]int64{0: 1}, Rejected: []RejectedLine{{Line: 2}},
			Result: &Result{Receipt: jsontext.Value(`{"a":"\u00e9"}`)}, CreatedAt: t0}
	}
	for name, edit := range map[string]func(*Job){
		"scalar":           func(j *Job) { j.Total = 1 },
		"map value":        func(j *Job) { j.Start[0] = 2 },
		"slice element":    func(j *Job) { j.Rejected[0].Code = "x" },
		"nil result":       func(j *Job) { j.Result = nil },
		"nested raw value": func(j *Job) { j.Result.Receipt = jsontext.Value(`{"a":"e"}`) },
		"absent raw value": func(j *Job) { j.Result.Receipt = nil },
		"empty object":     func(j *Job) { j.Result.Receipt = jsontext.Value(`{}`) },
		"time":             func(j *Job) { j.CreatedAt = t0.Add(time.Nanosecond) },
	} {
		j := base()
		edit(j)
		if same(base(), j) {
			t.Errorf("%s: change not seen", name)
		}
	}
	for name, edit := range map[string]func(*Job){
		"nil vs empty":     func(j *Job) { j.Skipped = []LineRange{} },
		"zone":             func(j *Job) { j.CreatedAt = t0.In(time.FixedZone("", 3600)) },
		"escapes, spacing": func(j *Job) { j.Result.Receipt = jsontext.Value(` { "a" : "é" }`) },
	} {
		j := base()
		edit(j)
		if !same(base(), j) {
			t.Errorf("%s: equivalent value seen as different", name)
		}
	}
}

// Seeds shared by the targets. A job embeds a result, so each target gets
// the others' seeds too: they exercise the same field types.
var (
	requestSeeds = []string{
		`{"v":1,"id":"r-1","tenant":"acme","kind":"sign","payload":{}}`,
		`{"v":1,"id":"r-2","tenant":"acme","kind":"sign","payload":{"a":[1,2.5e3,"\u00e9"]},"received_at":"2025-01-02T03:04:05.123456789+02:00"}`,
		`{"v":1,"id":"j1.7","tenant":"acme","kind":"verify","receipt":{"protected":"x"},"jwks":{"keys":[]},"job_id":"j1","line":7}`,
		`{"v":1,"id":"r","tenant":"t","kind":"verify","receipt":{},"job_id":"j","line":4294967296}`,
		`{"v":1,"id":"r","tenant":"t","kind":"sign","payload":{},"line":3}`,
		`{"v":1,"id":"r","tenant":"t","kind":"sign","payload":{},"job_id":"j","line":4294967297}`,
		`{"v":2,"id":"a b","tenant":"","kind":"mint","payload":null,"receipt":[]}`,
		`{"v":1,"id":"` + strings.Repeat("x", 129) + `","tenant":"t","kind":"sign","payload":{}}`,
		`{"v":1,"id":"r","tenant":"t","kind":"sign","payload":{},"id":"s"}`,
		`{"v":1,"id":"r","tenant":"t","kind":"sign","payload":{"a":1,"a":2}}`,
		`{"v":1,"id":"r","tenant":"t","kind":"sign","payload":{},"received_at":"0001-01-01T01:00:00+01:00"}`,
	}
	resultSeeds = []string{
		`{"v":1,"id":"r-1","tenant":"acme","kind":"sign","status":"signed","auth":"ingest","kid":"k","receipt_id":"rid","payload_hash":"h","receipt":{},"size":12,"processed_at":"2025-01-02T03:04:05Z"}`,
		`{"v":1,"id":"r-2","tenant":"acme","kind":"verify","status":"invalid","reason":"bad_signature","auth":"producer","keys":"caller","job_id":"j","line":1,"size":0,"received_at":"2025-01-02T03:04:05Z","processed_at":"2025-01-02T03:04:06.5Z"}`,
		`{"v":1,"id":"r","tenant":"t","kind":"sign","status":"signed","auth":"none","size":1,"processed_at":"2025-01-02T03:04:05Z"}`,
		`{"v":1,"id":"r","tenant":"t","kind":"sign","status":"failed","reason":"unauthenticated","auth":"none","size":-1,"processed_at":"0001-01-01T00:00:00Z"}`,
	}
	jobSeeds = []string{
		`{"v":1,"id":"j1","tenant":"acme","kind":"sign","state":"uploading","nonce":"n","start":{"0":10,"1":-1},"lines_read":5,"total":3,"rejected":[{"line":2,"code":"bad_json","message":"x"}],"skipped":[{"from":4,"to":4}],"done":0,"valid":0,"invalid":0,"failed":0,"created_at":"2025-01-02T03:04:05Z"}`,
		`{"v":1,"id":"j2","tenant":"acme","kind":"verify","single":true,"state":"done","lines_read":0,"total":1,"done":1,"valid":1,"invalid":0,"failed":0,"result":` + `{"v":1,"id":"r","tenant":"acme","kind":"verify","status":"valid","auth":"ingest","size":3,"processed_at":"2025-01-02T03:04:05Z"}` + `,"created_at":"2025-01-02T03:04:05Z","uploaded_at":"2025-01-02T03:04:06Z","finished_at":"2025-01-02T03:04:07Z"}`,
		`{"v":1,"id":"j3","tenant":"t","kind":"sign","state":"running","start":{},"rejected":[],"skipped":null,"result":{},"lines_read":1,"total":2,"created_at":"2025-01-02T03:04:05Z"}`,
		`{"v":1,"id":"j4","tenant":"t","kind":"sign","state":"abandoned","start":{"2147483648":1},"lines_read":-1,"total":-1,"created_at":"2025-01-02T03:04:05Z"}`,
	}
)

func addSeeds(f *testing.F) {
	for _, seeds := range [][]string{requestSeeds, resultSeeds, jobSeeds} {
		for _, s := range seeds {
			f.Add([]byte(s))
		}
	}
}

func FuzzDecodeRequest(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRequest(b)
		if err != nil && !errors.Is(err, ErrBadEnvelope) {
			t.Fatalf("error does not wrap ErrBadEnvelope: %v", err)
		}
		if r == nil {
			if err == nil {
				t.Fatal("nil request without an error")
			}
			return
		}
		// A request that fails validation is still returned (to name it in
		// the failed result), and its error is the validation error.
		if (err == nil) != requestValid(r) || (err == nil) != (r.Validate() == nil) {
			t.Fatalf("DecodeRequest: %v; rules say valid=%v for %+v", err, requestValid(r), r)
		}
		out, merr := json.Marshal(r)
		if merr != nil {
			t.Fatalf("decoded request does not marshal: %v", merr)
		}
		r2, err2 := DecodeRequest(out)
		if r2 == nil || (err == nil) != (err2 == nil) || !same(r, r2) {
			t.Fatalf("round trip changed the request (%v -> %v)\nin   %q\nout  %s\nback %+v", err, err2, b, out, r2)
		}
	})
}

func FuzzDecodeResult(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeResult(b)
		if (r == nil) == (err == nil) {
			t.Fatalf("result %v with error %v", r, err)
		}
		// Results that fail validation are dropped by readers, but the
		// rules must match: decode without validating to compare them.
		var raw Result
		if json.Unmarshal(b, &raw) != nil {
			return
		}
		if (err == nil) != resultValid(&raw) {
			t.Fatalf("DecodeResult: %v; rules say valid=%v for %+v", err, resultValid(&raw), raw)
		}
		out, merr := json.Marshal(&raw)
		if merr != nil {
			t.Fatalf("decoded result does not marshal: %v", merr)
		}
		var back Result
		if uerr := json.Unmarshal(out, &back); uerr != nil || !same(&raw, &back) || (back.Validate() == nil) != (err == nil) {
			t.Fatalf("round trip changed the result (%v)\nin   %q\nout  %s\nback %+v", uerr, b, out, back)
		}
		if _, err2 := DecodeResult(out); (err == nil) != (err2 == nil) {
			t.Fatalf("round trip changed validity: %v -> %v", err, err2)
		}
	})
}

func FuzzDecodeJob(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		j, err := DecodeJob(b)
		if j == nil {
			if err == nil {
				t.Fatal("nil job without an error")
			}
			return
		}
		if (err == nil) != jobValid(j) {
			t.Fatalf("DecodeJob: %v; rules say valid=%v for %+v", err, jobValid(j), j)
		}
		out, merr := json.Marshal(j)
		if merr != nil {
			t.Fatalf("decoded job does not marshal: %v", merr)
		}
		j2, err2 := DecodeJob(out)
		if j2 == nil || (err == nil) != (err2 == nil) || !same(j, j2) {
			t.Fatalf("round trip changed the job (%v -> %v)\nin   %q\nout  %s\nback %+v", err, err2, b, out, j2)
		}
	})
}

// An empty object is a payload (or receipt) like any other: it must be
// written out, not dropped as "empty" (omitempty did that once).
func TestEnvelopeEmptyObjectRoundTrip(t *testing.T) {
	req, err := DecodeRequest([]byte(`{"v":1,"id":"r","tenant":"t","kind":"sign","payload":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte(`"payload":{}`)) {
		t.Fatalf("payload dropped: %s", out)
	}
	back, err := DecodeRequest(out)
	if err != nil {
		t.Fatal(err)
	}
	if string(back.Payload) != `{}` {
		t.Fatalf("re-decoded payload %q", string(back.Payload))
	}

	res := &Result{V: 1, ID: "r", Tenant: "t", Kind: KindVerify, Status: StatusValid, Auth: AuthIngest, Receipt: jsontext.Value(`{}`)}
	out, err = json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	if back, err := DecodeResult(out); err != nil || string(back.Receipt) != `{}` {
		t.Fatalf("result receipt {} did not survive: %s -> %v", out, err)
	}
	job := &Job{V: 1, ID: "j", Tenant: "t", Kind: KindSign, State: JobDone, Single: true, Total: 1, Result: res}
	out, err = json.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	if back, err := DecodeJob(out); err != nil || back.Result == nil || string(back.Result.Receipt) != `{}` {
		t.Fatalf("job's result receipt {} did not survive: %s -> %v", out, err)
	}
}
