// Package envsecret reads secrets the way every CertNode role takes them:
// from an environment variable, or from the file another one names, never
// from a flag (flags show up in process listings).
package envsecret

import (
	"fmt"
	"os"
)

// Read returns $NAME, or the content of the file named by $NAME_FILE; ok
// is false when neither is set.
func Read(name string) (value string, ok bool, err error) {
	if v := os.Getenv(name); v != "" {
		return v, true, nil
	}
	f := os.Getenv(name + "_FILE")
	if f == "" {
		return "", false, nil
	}
	b, err := os.ReadFile(f)
	if err != nil {
		return "", true, fmt.Errorf("$%s_FILE: %w", name, err)
	}
	return string(b), true, nil
}
