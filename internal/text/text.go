// Package text holds the string helpers every tier needs the same way.
package text

import "unicode/utf8"

// Clip cuts s to at most n bytes, at a rune boundary, so a bounded field
// (a reason, an error message) never ends in half a character.
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
