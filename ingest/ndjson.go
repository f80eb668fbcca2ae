package ingest

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// lineReader splits an NDJSON upload into numbered lines, bounding each:
// a line longer than the limit is reported and skipped without being held
// in memory.
type lineReader struct {
	br  *bufio.Reader
	max int
	n   int64
}

func newLineReader(r io.Reader, maxLine int) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, maxLine+1), max: maxLine}
}

// line is one input line.
type line struct {
	n       int64
	doc     []byte // trimmed; valid until the next call
	tooLong bool
}

// next returns the next line, or io.EOF after the last one; any other
// error means the upload broke off. A final line without a newline counts;
// an empty remainder after the last newline does not.
func (r *lineReader) next() (line, error) {
	raw, err := r.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		for errors.Is(err, bufio.ErrBufferFull) {
			_, err = r.br.ReadSlice('\n')
		}
		if err != nil && err != io.EOF {
			return line{}, err
		}
		r.n++
		return line{n: r.n, tooLong: true}, nil
	}
	if err != nil && (err != io.EOF || len(raw) == 0) {
		return line{}, err
	}
	r.n++
	if len(bytes.TrimSuffix(raw, []byte("\n"))) > r.max { // bufio's buffer is at least 16 bytes
		return line{n: r.n, tooLong: true}, nil
	}
	return line{n: r.n, doc: bytes.TrimSpace(raw)}, nil
}
