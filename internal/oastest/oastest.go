// Package oastest checks a running server's HTTP exchanges against an
// OpenAPI 3.1 document, for conformance tests: each request is validated
// against its operation (security, parameters, body) and each response
// against the operation's responses, undocumented statuses included.
package oastest

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// Pages and style sheets are text, as text/plain is.
func init() {
	openapi3filter.RegisterBodyDecoder("text/html", openapi3filter.PlainBodyDecoder)
	openapi3filter.RegisterBodyDecoder("text/css", openapi3filter.PlainBodyDecoder)
}

// Doc is a loaded document, routed at a test server.
type Doc struct {
	*openapi3.T
	Router  routers.Router
	Options *openapi3filter.Options
}

// Load reads an OpenAPI document (JSON or YAML), requires it to be a
// valid OpenAPI 3.1 document (so JSON Schema 2020-12 validation applies),
// and points its servers at base, the test server. auth decides whether a
// request satisfies one security scheme of the document.
func Load(t testing.TB, data []byte, base string, auth openapi3filter.AuthenticationFunc) *Doc {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(data)
	if err != nil {
		t.Fatalf("load the OpenAPI document: %v", err)
	}
	if !doc.IsOpenAPI31OrLater() {
		t.Fatalf("the document is OpenAPI %s; 3.1 validation would not apply", doc.OpenAPI)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("not a valid OpenAPI document: %v", err)
	}
	doc.Servers = openapi3.Servers{{URL: base}}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &Doc{T: doc, Router: router, Options: &openapi3filter.Options{IncludeResponseStatus: true, AuthenticationFunc: auth}}
}

// Operations lists the document's operations by "METHOD PATH".
func (d *Doc) Operations() map[string]*openapi3.Operation {
	ops := map[string]*openapi3.Operation{}
	for path, item := range d.Paths.Map() {
		for method, op := range item.Operations() {
			ops[method+" "+path] = op
		}
	}
	return ops
}

// Result is a server's answer to one exchange.
type Result struct {
	Status int
	Header http.Header
	Body   string
	// Op is the operation, "METHOD PATH" as the document names it.
	Op string
	// Conforms: the response was validated against the document.
	Conforms bool
}

// Exchange sends req with hc and checks both sides against the document.
// The request must conform unless offSpec, and then it must not (the
// server refuses it, or takes what it can). A request that matches no
// operation stops the test.
func (d *Doc) Exchange(t testing.TB, hc *http.Client, req *http.Request, name string, offSpec bool) Result {
	t.Helper()
	body := readBody(t, req)
	in, reqErr := d.validate(t, hc, req, body, name)
	switch {
	case offSpec && reqErr == nil:
		t.Errorf("%s: the document accepts a request the case says it does not", name)
	case !offSpec && reqErr != nil:
		t.Errorf("%s: the request does not conform to the document: %v", name, reqErr)
	}
	resp, err := hc.Do(withBody(req, body))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("%s: reading the body: %v", name, err)
	}
	out := Result{Status: resp.StatusCode, Header: resp.Header, Body: string(b), Op: in.Route.Method + " " + in.Route.Path}
	rin := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: out.Status, Header: out.Header, Options: d.Options}
	rin.SetBodyBytes(b)
	if err := openapi3filter.ValidateResponse(context.Background(), rin); err != nil {
		t.Errorf("%s: %d response breaks the document: %v\nbody: %.2000s", name, out.Status, err, out.Body)
		return out
	}
	out.Conforms = true
	return out
}

// Conforms checks req, as hc would send it, against the document without
// sending it: nil, or why it does not conform.
func (d *Doc) Conforms(t testing.TB, hc *http.Client, req *http.Request) error {
	t.Helper()
	_, err := d.validate(t, hc, req, readBody(t, req), req.Method+" "+req.URL.Path)
	return err
}

// validate checks a copy of req with body against its operation. Cookies
// hc's jar would add are seen too, so a cookie security scheme is checked.
func (d *Doc) validate(t testing.TB, hc *http.Client, req *http.Request, body []byte, name string) (*openapi3filter.RequestValidationInput, error) {
	t.Helper()
	vreq := withBody(req, body)
	if hc.Jar != nil {
		for _, c := range hc.Jar.Cookies(req.URL) {
			vreq.AddCookie(c)
		}
	}
	route, params, err := d.Router.FindRoute(vreq)
	if err != nil {
		t.Fatalf("%s: %s %s is not an operation of the document: %v", name, req.Method, req.URL.Path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route, Options: d.Options}
	return in, openapi3filter.ValidateRequest(context.Background(), in)
}

func readBody(t testing.TB, req *http.Request) []byte {
	t.Helper()
	if req.Body == nil {
		return nil
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the request body: %v", req.Method, req.URL.Path, err)
	}
	req.Body.Close()
	return body
}

// withBody copies r with its own reader of body: validation consumes a
// body, so the request validated and the one sent are copies.
func withBody(r *http.Request, body []byte) *http.Request {
	c := r.Clone(r.Context())
	c.Body, c.ContentLength = http.NoBody, 0
	c.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	if len(body) > 0 {
		c.Body, _ = c.GetBody()
		c.ContentLength = int64(len(body))
	}
	return c
}
