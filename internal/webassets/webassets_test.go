package webassets

import (
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"
)

func TestSet(t *testing.T) {
	s, err := Load(fstest.MapFS{
		"assets/app.js":     {Data: []byte("console.log(1)")},
		"assets/index.html": {Data: []byte("<html>")},
		"assets/v/x.css":    {Data: []byte("a{}")},
	}, "assets", "/p/assets/")
	if err != nil {
		t.Fatal(err)
	}
	r := s.Ref("app.js")
	if !strings.HasPrefix(r.URL, "/p/assets/app.js?v=") || !strings.HasPrefix(r.Integrity, "sha256-") {
		t.Fatalf("%+v", r)
	}
	if s.Ref("v/x.css").URL == s.Ref("app.js").URL {
		t.Fatal("two files, one URL")
	}
	for path, want := range map[string]int{"/p/assets/app.js": 200, "/p/assets/v/x.css": 200, "/p/assets/index.html": 404, "/p/assets/nope.js": 404} {
		w := httptest.NewRecorder()
		s.Serve(w, httptest.NewRequest("GET", path, nil))
		if w.Code != want {
			t.Errorf("%s: %d, want %d", path, w.Code, want)
		}
		if want == 200 && (!strings.Contains(w.Header().Get("Cache-Control"), "immutable") || w.Header().Get("Content-Type") == "") {
			t.Errorf("%s: %v", path, w.Header())
		}
	}
}
