package schemas

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Export errors, which the API answers with their own status.
var (
	// ErrBadExport is wrapped by every refusal of an export request or
	// cursor: the caller's mistake (400), found before anything is written.
	ErrBadExport = errors.New("bad export")
	// ErrExportNotFound: no such export job in the organization (404).
	ErrExportNotFound = errors.New("no such export")
	// ErrTooManyExports: the organization's, or the server's, export jobs
	// are all busy (429).
	ErrTooManyExports = errors.New("too many exports running")
	// ErrExportLink: a download link that is forged, altered or expired,
	// or whose file is gone (403).
	ErrExportLink = errors.New("invalid or expired download link")
)

// ExportRequest is one export of an organization's data, as the API takes
// it: a kind, a format and a range, with exact-match filters.
type ExportRequest struct {
	// Kind is results, receipts, usage or webhook_attempts.
	Kind string `json:"kind"`
	// Format is csv, ndjson, json, arrow or parquet.
	Format string `json:"format"`
	// From and To bound the rows' time, [From, To), in whole seconds.
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
	// Filters are exact matches on the kind's filterable columns.
	Filters map[string]string `json:"filters,omitempty"`
	// Receipt adds the receipt JSON to results.
	Receipt bool `json:"receipt,omitempty"`
	// Bodies adds request and response bodies to webhook attempts.
	Bodies bool `json:"bodies,omitempty"`
}

// ExportResult says where a streamed export stands.
type ExportResult struct {
	// Rows and Bytes are what this call wrote.
	Rows, Bytes int64
	// Cursor resumes after the last row written.
	Cursor string
}

// ExportColumn is a column of a table written as an export: Type is
// string, int64, uint64, float64, bool, timestamp or json.
type ExportColumn struct {
	Name string
	Type string
}

// Export job states.
const (
	ExportQueued   = "queued"
	ExportRunning  = "running"
	ExportDone     = "done"
	ExportFailed   = "failed"
	ExportCanceled = "canceled"
)

// ExportJob is an export running in the background into a file, which a
// signed link downloads until it expires.
type ExportJob struct {
	ID      string        `json:"id"`
	Org     string        `json:"organization"`
	Request ExportRequest `json:"request"`
	Status  string        `json:"status"`
	// Rows and Bytes are written so far; EstimatedRows is counted when the
	// job starts (copies of a result make it a little high), for progress.
	Rows          int64 `json:"rows"`
	Bytes         int64 `json:"bytes"`
	EstimatedRows int64 `json:"estimated_rows"`
	// Progress is Rows over EstimatedRows, 1 when done.
	Progress   float64   `json:"progress"`
	Error      string    `json:"error,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	// ExpiresAt is when the file is deleted.
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	FileName  string    `json:"file_name"`
	// DownloadURL is set once done: a link anyone holding it may use,
	// until DownloadExpiresAt (each read of the job issues a fresh one).
	DownloadURL       string    `json:"download_url,omitempty"`
	DownloadExpiresAt time.Time `json:"download_expires_at,omitzero"`
}

// ExportFileName is the name an export is downloaded under: what it holds,
// the organization and the range, with only characters safe in any file
// system and in a Content-Disposition header.
func ExportFileName(what, org string, from, to time.Time, ext string) string {
	safe := func(s string) string {
		return strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
				return r
			}
			return '_'
		}, s)
	}
	const stamp = "20060102T150405Z"
	return fmt.Sprintf("%s-%s-%s-%s%s", safe(what), safe(org), from.UTC().Format(stamp), to.UTC().Format(stamp), safe(ext))
}
