package main

import (
	"context"
	"io"
	"time"

	"github.com/certnode/certnode/compliance"
	"github.com/certnode/certnode/exports"
	"github.com/certnode/certnode/ingest"
	"github.com/certnode/certnode/internal/recordauth"
	"github.com/certnode/certnode/schemas"
)

// exportService is exports.Service as ingest calls it.
type exportService struct{ *exports.Service }

func (s exportService) Table(w io.Writer, format string, cols []schemas.ExportColumn) (ingest.TableWriter, error) {
	tw, err := s.Service.Table(w, format, cols)
	if err != nil {
		return nil, err
	}
	return tw, nil
}

// pdfRenderer is compliance.Renderer as ingest calls it.
type pdfRenderer struct{ compliance.Renderer }

func (r pdfRenderer) Table(w io.Writer, title, subtitle string, at time.Time, cols []schemas.ExportColumn) (ingest.TableWriter, error) {
	tw, err := r.Renderer.Table(w, title, subtitle, at, cols)
	if err != nil {
		return nil, err
	}
	return tw, nil
}

// openExports serves exports out of ClickHouse at addr and, with dir, runs
// export jobs there (parts["exports"]) as node, which names this process
// among those sharing dir across its restarts. The cursor and link keys derive
// from the internal secret, so that every ingest node holding it resumes
// the others' cursors and serves their links (from a shared dir); a
// rotated secret voids cursors and links made before, which live minutes.
func openExports(ctx context.Context, addr, password string, mac *recordauth.Keyring, dir, node string,
	parts map[string]func(context.Context) error, d *ingest.Deps) (closeAll func(), err error) {
	kid := mac.SignKeyID()
	cursorKey, _ := mac.Derive(kid, []byte("certnode-export-cursor"))
	linkKey, _ := mac.Derive(kid, []byte("certnode-export-link"))
	ex, err := exports.Open(ctx, []string{addr}, "default", password, exports.Config{CursorKey: cursorKey})
	if err != nil {
		return nil, err
	}
	d.Exports = exportService{exports.NewService(ex)}
	if dir == "" {
		return func() { ex.Close() }, nil
	}
	jobs, err := exports.NewJobs(ex, exports.JobsConfig{Dir: dir, LinkKey: linkKey, Node: node})
	if err != nil {
		ex.Close()
		return nil, err
	}
	d.ExportJobs, parts["exports"] = jobs, jobs.Run
	return func() { jobs.Close(); ex.Close() }, nil
}
