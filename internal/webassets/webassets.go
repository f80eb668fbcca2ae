// Package webassets serves the files a page embeds (the dashboard, the
// verification page): each is named with a version of its content, so a
// cached copy is never stale, and with its SHA-256 for subresource
// integrity.
package webassets

import (
	"crypto/sha256"
	"encoding/base64"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
)

// Set is a page's files, served under a URL prefix.
type Set struct {
	prefix string
	files  map[string][]byte // path under the folder -> content
}

// Ref is how a page names one: its URL and its integrity.
type Ref struct{ URL, Integrity string }

// Load reads every file under dir of fsys, to be served under prefix
// (e.g. "/dashboard/assets/").
func Load(fsys fs.FS, dir, prefix string) (*Set, error) {
	s := &Set{prefix: prefix, files: map[string][]byte{}}
	err := fs.WalkDir(fsys, dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(fsys, p)
		s.files[strings.TrimPrefix(p, dir+"/")] = b
		return err
	})
	return s, err
}

// File is a file's content (nil: none).
func (s *Set) File(name string) []byte { return s.files[name] }

// Ref names a file for the page.
func (s *Set) Ref(name string) Ref {
	sum := sha256.Sum256(s.files[name])
	return Ref{URL: s.prefix + name + "?v=" + base64.RawURLEncoding.EncodeToString(sum[:6]),
		Integrity: "sha256-" + base64.StdEncoding.EncodeToString(sum[:])}
}

// Serve answers a request for the file at its path under the prefix; the
// page's own template (index.html) and unknown names are 404.
func (s *Set) Serve(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, s.prefix)
	b, ok := s.files[name]
	if !ok || name == "index.html" {
		http.NotFound(w, r)
		return
	}
	ctype := mime.TypeByExtension(path.Ext(name))
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	w.Write(b)
}
