package ingest

import (
	"github.com/valyala/fasthttp"

	"github.com/certnode/certnode/schemas"
)

// openAPIJSON is the embedded OpenAPI document, converted from YAML once
// when the program starts; a document that does not convert stops it there
// (the schemas tests load the same document).
var openAPIJSON = func() []byte {
	b, err := schemas.OpenAPIJSON()
	if err != nil {
		panic(err)
	}
	return append(b, '\n')
}()

// openAPI serves GET /openapi.json.
func (s *Server) openAPI(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("application/json")
	ctx.SetBody(openAPIJSON)
}
