package events

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
)

// Traceparent is a W3C Trace Context traceparent: the trace a message belongs to and
// the span that sent it.
type Traceparent struct {
	TraceID  string // 32 lowercase hex digits, not all zero
	ParentID string // 16 lowercase hex digits, not all zero: the sender's span
	Flags    string // 2 hex digits; "01" is sampled
}

// String is the header value, version 00.
func (t Traceparent) String() string {
	return "00-" + t.TraceID + "-" + t.ParentID + "-" + t.Flags
}

// Sampled reports whether the sampled flag is set.
func (t Traceparent) Sampled() bool {
	b, err := hex.DecodeString(t.Flags)
	return err == nil && len(b) == 1 && b[0]&1 == 1
}

// NewTraceparent starts a new sampled trace, with a new span as its parent.
func NewTraceparent() Traceparent {
	return Traceparent{TraceID: randomHex(16), ParentID: randomHex(8), Flags: "01"}
}

// Child is a traceparent of the same trace with a new span as parent: what a hop that
// continues t sends on.
func (t Traceparent) Child() Traceparent {
	return Traceparent{TraceID: t.TraceID, ParentID: randomHex(8), Flags: t.Flags}
}

// ParseTraceparent reads a traceparent header: version 00 exactly, or a later version
// (not ff) whose first four fields are those of 00, as docs/wire-protocol.md allows.
func ParseTraceparent(value string) (Traceparent, error) {
	bad := func(why string) (Traceparent, error) {
		return Traceparent{}, fmt.Errorf("traceparent %q is malformed: %s", clip(value), why)
	}
	parts := strings.Split(value, "-")
	if len(parts) < 4 {
		return bad("want version-traceid-parentid-flags")
	}
	version, trace, parent, flags := parts[0], parts[1], parts[2], parts[3]
	if !isHex(version, 2) || version == "ff" {
		return bad("version must be 2 lowercase hex digits, not ff")
	}
	if version == "00" && (len(parts) != 4 || len(value) != 55) {
		return bad("version 00 has exactly four fields")
	}
	if version != "00" && len(value) > 55 && value[55] != '-' {
		return bad("a later version must continue with '-' after the four fields of 00")
	}
	if !isHex(trace, 32) || trace == strings.Repeat("0", 32) {
		return bad("trace id must be 32 lowercase hex digits, not all zero")
	}
	if !isHex(parent, 16) || parent == strings.Repeat("0", 16) {
		return bad("parent id must be 16 lowercase hex digits, not all zero")
	}
	if !isHex(flags, 2) {
		return bad("flags must be 2 lowercase hex digits")
	}
	return Traceparent{TraceID: trace, ParentID: parent, Flags: flags}, nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < n; i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func randomHex(n int) string {
	b := make([]byte, n)
	for {
		if _, err := rand.Read(b); err != nil {
			panic(fmt.Sprintf("events: no randomness: %v", err))
		}
		for _, c := range b {
			if c != 0 {
				return hex.EncodeToString(b)
			}
		}
	}
}
