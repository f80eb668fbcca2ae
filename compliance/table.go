package compliance

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"time"

	"github.com/go-pdf/fpdf"

	"github.com/certnode/certnode/schemas"
)

// maxTableRows bounds a table drawn as a PDF (fpdf holds the document
// until it is written out): the audit trail and report runs stay under it.
const maxTableRows = 200_000

// TablePDF draws the rows of a table (an audit events export, a report
// run) as a landscape PDF, its header repeated on every page; Close writes
// the document to w.
type TablePDF struct {
	w      io.Writer
	pdf    *fpdf.Fpdf
	cols   []schemas.ExportColumn
	widths []float64
	rows   int
}

// Table starts a PDF of a table titled title, with subtitle (its period)
// under the title, drawn at at.
func (Renderer) Table(w io.Writer, title, subtitle string, at time.Time, cols []schemas.ExportColumn) (*TablePDF, error) {
	if len(cols) == 0 {
		return nil, errors.New("compliance: a table needs columns")
	}
	pdf, err := newDoc("L", title, subtitle, at)
	if err != nil {
		return nil, err
	}
	t := &TablePDF{w: w, pdf: pdf, cols: cols}
	usable, _ := pdf.GetPageSize()
	left, _, right, _ := pdf.GetMargins()
	for range cols {
		t.widths = append(t.widths, (usable-left-right)/float64(len(cols)))
	}
	pdf.SetHeaderFunc(func() {
		if pdf.PageNo() == 1 {
			pdf.SetFont("dejavu", "B", 14)
			pdf.MultiCell(0, 7, title, "", "L", false)
			pdf.SetFont("dejavu", "", 9)
			pdf.MultiCell(0, 5, subtitle, "", "L", false)
			pdf.Ln(2)
		}
		pdf.SetFont("dejavu", "B", 8)
		for i, c := range cols {
			pdf.CellFormat(t.widths[i], 5.5, clip(pdf, c.Name, t.widths[i]), "B", 0, "L", false, 0, "")
		}
		pdf.Ln(-1)
		pdf.SetFont("dejavu", "", 8)
	})
	pdf.SetFooterFunc(func() {
		pdf.SetY(-12)
		pdf.SetFont("dejavu", "", 7)
		pdf.CellFormat(0, 5, fmt.Sprintf("%s · page %d", title, pdf.PageNo()), "", 0, "C", false, 0, "")
	})
	pdf.AddPage()
	return t, nil
}

// Write draws a row: one value per column, as exports' rows hold them.
func (t *TablePDF) Write(row []any) error {
	if len(row) != len(t.cols) {
		return fmt.Errorf("compliance: a row of %d values for %d columns", len(row), len(t.cols))
	}
	if t.rows++; t.rows > maxTableRows {
		return fmt.Errorf("compliance: more than %d rows do not fit a PDF; export them as CSV or Parquet", maxTableRows)
	}
	for i, v := range row {
		t.pdf.CellFormat(t.widths[i], 5, clip(t.pdf, cell(v), t.widths[i]), "", 0, "L", false, 0, "")
	}
	t.pdf.Ln(-1)
	return t.pdf.Error()
}

// Close writes the document out.
func (t *TablePDF) Close() error {
	if t.rows == 0 {
		t.pdf.CellFormat(0, 5, "None.", "", 1, "L", false, 0, "")
	}
	if err := t.pdf.Error(); err != nil {
		return err
	}
	return t.pdf.Output(t.w)
}

// cell is a value as the table shows it.
func cell(v any) string {
	switch v := v.(type) {
	case time.Time:
		return stamp(v)
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return ""
		}
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	return text(v)
}
