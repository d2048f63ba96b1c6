package events

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
)

var (
	idPattern     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)
	tenantPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)
)

// NewID returns a fresh random id: 32 hex digits, as the mesh makes them.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("events: no randomness: %v", err))
	}
	return hex.EncodeToString(b[:])
}

// CheckID reports whether value is an id of the wire protocol: 1-128 letters, digits
// and `._:-`, starting with a letter or digit. name says which value is at fault.
func CheckID(name, value string) error {
	if !idPattern.MatchString(value) {
		return fmt.Errorf("%s %q is not an id (1-128 letters, digits and ._:-, starting with a letter or digit)", name, clip(value))
	}
	return nil
}

// CheckTenantID reports whether value is a tenant id: 1-64 letters, digits, `_` and
// `-`, starting with a letter or digit.
func CheckTenantID(name, value string) error {
	if !tenantPattern.MatchString(value) {
		return fmt.Errorf("%s %q is not a tenant id (1-64 letters, digits, _ and -, starting with a letter or digit)", name, clip(value))
	}
	return nil
}

// CheckEventID reports whether value is an event id: 1-256 printable ASCII
// characters, not starting or ending with a space.
func CheckEventID(name, value string) error {
	ok := len(value) >= 1 && len(value) <= 256 && value[0] != ' ' && value[len(value)-1] != ' '
	for i := 0; ok && i < len(value); i++ {
		ok = value[i] >= 0x20 && value[i] <= 0x7e
	}
	if !ok {
		return fmt.Errorf("%s %q is not an event id (1-256 printable ASCII characters, no space at either end)", name, clip(value))
	}
	return nil
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
