package main

import (
	"bufio"
	"bytes"
	"io"
	"os"

	"github.com/spf13/cobra"
)

// openInput returns the named file, or stdin for "" and "-".
func openInput(cmd *cobra.Command, path string) (io.ReadCloser, error) {
	if path == "" || path == "-" {
		return io.NopCloser(cmd.InOrStdin()), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, usageErr("%v", err)
	}
	return f, nil
}

// maxDocument bounds one JSON document read whole (a single payload or
// receipt); NDJSON is streamed line by line instead.
const maxDocument = 64 << 20

func readDocument(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxDocument+1))
	if err != nil {
		return nil, usageErr("read input: %v", err)
	}
	if len(b) > maxDocument {
		return nil, usageErr("input is larger than %d MiB; use --ndjson for many documents", maxDocument>>20)
	}
	return b, nil
}

// eachLine calls f with every non-blank line and its 1-based number. Lines
// may be of any length.
func eachLine(r io.Reader, f func(n int, line []byte) error) error {
	br := bufio.NewReaderSize(r, 1<<20)
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if t := bytes.TrimSpace(line); len(t) > 0 {
			if ferr := f(n, t); ferr != nil {
				return ferr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return usageErr("read input: %v", err)
		}
	}
}
