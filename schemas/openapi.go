package schemas

import (
	_ "embed"
	"fmt"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/goccy/go-yaml"
)

// openAPIYAML is the OpenAPI 3.1 document of the public HTTP API.
//
//go:embed openapi.yaml
var openAPIYAML []byte

// OpenAPIYAML returns the OpenAPI document as written.
func OpenAPIYAML() []byte { return append([]byte(nil), openAPIYAML...) }

// OpenAPIJSON converts the OpenAPI document to compact JSON, keeping its
// key order. The YAML is read as YAML 1.2 (y, no, on are strings, not
// booleans as in YAML 1.1), and a duplicate key is an error rather than
// one value silently replacing the other.
func OpenAPIJSON() ([]byte, error) {
	b, err := yaml.YAMLToJSON(openAPIYAML)
	if err != nil {
		return nil, fmt.Errorf("openapi.yaml: %w", err)
	}
	v := jsontext.Value(b)
	if err := v.Compact(); err != nil {
		return nil, fmt.Errorf("openapi.yaml: %w", err)
	}
	return v, nil
}
