package schemas

import (
	"bytes"
	"encoding/csv"
	"slices"
	"testing"
)

func TestInvoiceCSV(t *testing.T) {
	inv := &Invoice{Organization: "acme", Period: "2026-05", Status: InvoiceOpen, Currency: "EUR",
		Lines: []InvoiceLine{
			{Type: LineBase, Description: "Base price, plan Pro, \"annual\"", Quantity: 1, Unit: "month", UnitPrice: 4900, Amount: 4900},
			{Type: LineIncluded, Description: "=HYPERLINK(\"x\")", Quantity: 10000, Unit: "receipt"},
			{Type: LineOverage, Description: "1 receipts over the allowance, per started 1,000", Quantity: 1, Unit: "1,000 receipts", UnitPrice: 150, Amount: 150},
		}, Total: 5050}
	got := string(inv.CSV())
	want := "organization,period,status,currency,type,description,quantity,unit,unit_price,amount\n" +
		"acme,2026-05,open,EUR,base,\"Base price, plan Pro, \"\"annual\"\"\",1,month,4900,4900\n" +
		"acme,2026-05,open,EUR,included,\"'=HYPERLINK(\"\"x\"\")\",10000,receipt,0,0\n" +
		"acme,2026-05,open,EUR,overage,\"1 receipts over the allowance, per started 1,000\",1,\"1,000 receipts\",150,150\n" +
		"acme,2026-05,open,EUR,total,,,,,5050\n"
	if got != want {
		t.Fatalf("CSV\n%s\nwant\n%s", got, want)
	}
	recs, err := csv.NewReader(bytes.NewReader(inv.CSV())).ReadAll()
	if err != nil || len(recs) != 5 || !slices.Equal(recs[0], InvoiceCSVHeader) || recs[4][9] != "5050" {
		t.Fatalf("read back %q, %v", recs, err)
	}
}
