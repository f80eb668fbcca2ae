package schemas

import (
	"fmt"
	"time"

	"github.com/go-json-experiment/json"
)

// JobState is where a job stands.
type JobState string

const (
	JobUploading JobState = "uploading" // lines are still being read and produced
	JobRunning   JobState = "running"   // every line is in Kafka; results are arriving
	JobDone      JobState = "done"      // every accepted line has its result
	// JobAbandoned: the upload stopped without finishing (the ingest process
	// or the client went away); lines already produced still get results.
	JobAbandoned JobState = "abandoned"
)

// RejectedLine is a bulk job line refused at upload.
type RejectedLine struct {
	Line    int64  `json:"line"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// LineRange is an inclusive range of input line numbers.
type LineRange struct {
	From int64 `json:"from"`
	To   int64 `json:"to"`
}

// Job is the value of a certnode.jobs record (compacted, key = job id): a
// bulk job, or a single request whose caller was told to poll. Every
// ingest process reads the topic, so any of them answers for any job, and
// a restart loses none.
type Job struct {
	V      int      `json:"v"`
	ID     string   `json:"id"`
	Tenant string   `json:"tenant"`
	Kind   Kind     `json:"kind"`
	Single bool     `json:"single,omitempty"` // a /v1/sign or /v1/verify request answered 504
	State  JobState `json:"state"`
	// Nonce and KeyID derive the request id of each line (see ingest),
	// keyed with the internal secret KeyID names; a result is counted for a
	// line only when its id matches.
	Nonce string `json:"nonce,omitempty"`
	KeyID string `json:"key_id,omitempty"`
	// Start holds the certnode.receipts end offsets when the job began:
	// its results are at or after them.
	Start map[int32]int64 `json:"start,omitempty"`
	// LinesRead is the last input line number read; Total the lines
	// accepted (produced and acknowledged by the broker).
	LinesRead int64 `json:"lines_read"`
	Total     int64 `json:"total"`
	// Rejected lists the lines refused at upload; Skipped the blank lines.
	// Every other line up to LinesRead was accepted.
	Rejected []RejectedLine `json:"rejected,omitempty"`
	Skipped  []LineRange    `json:"skipped,omitempty"`
	// Counts, final once State is done.
	Done    int64 `json:"done"`
	Valid   int64 `json:"valid"`
	Invalid int64 `json:"invalid"`
	Failed  int64 `json:"failed"`
	// Result is a single request's result, once it arrived.
	Result     *Result   `json:"result,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	UploadedAt time.Time `json:"uploaded_at,omitzero"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
}

// Validate checks a job record's shape; readers drop records that fail it.
func (j *Job) Validate() error {
	if j.V != EnvelopeVersion {
		return fmt.Errorf("job: v must be %d", EnvelopeVersion)
	}
	if err := checkToken("job id", j.ID, MaxIDBytes); err != nil {
		return err
	}
	if err := checkToken("tenant", j.Tenant, MaxTenantBytes); err != nil {
		return err
	}
	if j.Kind != KindSign && j.Kind != KindVerify {
		return fmt.Errorf("job: kind %q", j.Kind)
	}
	switch j.State {
	case JobUploading, JobRunning, JobDone, JobAbandoned:
	default:
		return fmt.Errorf("job: state %q", j.State)
	}
	if j.Total < 0 || j.LinesRead < 0 || j.Total > j.LinesRead && !j.Single {
		return fmt.Errorf("job: total %d and lines read %d", j.Total, j.LinesRead)
	}
	if j.Result != nil {
		if err := j.Result.Validate(); err != nil {
			return fmt.Errorf("job: result: %w", err)
		}
	}
	return nil
}

// DecodeJob parses and validates a certnode.jobs value.
func DecodeJob(b []byte) (*Job, error) {
	var j Job
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, err
	}
	return &j, j.Validate()
}
