package events

import (
	"bytes"
	"time"
	"unicode/utf8"
)

// decodeEnvelopeFast parses the envelopes Strata itself writes — a flat
// object of plain strings plus a data object — without reflection, which
// makes replay several times faster. It accepts only a strict subset of
// JSON: each known member at most once, strings without escapes, no unknown
// members. On anything else it returns false and the caller falls back to
// encoding/json, so the result never differs from the standard decoder's
// (FuzzDecodeFast checks this).
func decodeEnvelopeFast(b []byte, env *Envelope) bool {
	p := parser{b: b}
	p.ws()
	if !p.eat('{') {
		return false
	}
	var seen uint8
	p.ws()
	if p.eat('}') {
		return p.end()
	}
	for {
		p.ws()
		key, ok := p.plainString()
		if !ok {
			return false
		}
		p.ws()
		if !p.eat(':') {
			return false
		}
		p.ws()
		var bit uint8
		var dst *string
		switch string(key) {
		case "specversion":
			bit, dst = 1, &env.SpecVersion
		case "id":
			bit, dst = 2, &env.ID
		case "source":
			bit, dst = 4, &env.Source
		case "type":
			bit, dst = 8, &env.Type
		case "subject":
			bit, dst = 16, &env.Subject
		case "datacontenttype":
			bit, dst = 32, &env.DataContentType
		case "time":
			bit = 64
		case "data":
			bit = 128
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		switch bit {
		case 128:
			start := p.i
			if !p.object() {
				return false
			}
			env.Data = bytes.Clone(b[start:p.i])
		case 64:
			s, ok := p.plainString()
			if !ok {
				return false
			}
			t, err := time.Parse(time.RFC3339Nano, string(s))
			if err != nil || !rfc3339Strict(s) {
				return false
			}
			env.Time = t
		default:
			s, ok := p.plainString()
			if !ok {
				return false
			}
			*dst = string(s)
		}
		p.ws()
		if p.eat('}') {
			return p.end()
		}
		if !p.eat(',') {
			return false
		}
	}
}

// rfc3339Strict rejects what time.Parse accepts but encoding/json's
// time.Time.UnmarshalJSON does not (it insists on a 4-digit year, two-digit
// fields and a 'T'), by only accepting the layout Go itself writes.
func rfc3339Strict(s []byte) bool {
	// 2006-01-02T15:04:05[.fraction](Z|±hh:mm)
	if len(s) < len("2006-01-02T15:04:05Z") || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' {
		return false
	}
	for _, i := range []int{0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18} {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	rest := s[19:]
	if len(rest) > 0 && rest[0] == '.' {
		j := 1
		for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
			j++
		}
		if j == 1 {
			return false
		}
		rest = rest[j:]
	}
	switch {
	case len(rest) == 1 && rest[0] == 'Z':
		return true
	case len(rest) == 6 && (rest[0] == '+' || rest[0] == '-') && rest[3] == ':':
		for _, c := range []byte{rest[1], rest[2], rest[4], rest[5]} {
			if c < '0' || c > '9' {
				return false
			}
		}
		return true
	}
	return false
}

type parser struct {
	b []byte
	i int
}

func (p *parser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) eat(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

func (p *parser) end() bool {
	p.ws()
	return p.i == len(p.b)
}

// plainString reads a string with no escapes and no control characters,
// valid UTF-8, and returns its content.
func (p *parser) plainString() ([]byte, bool) {
	if !p.eat('"') {
		return nil, false
	}
	start := p.i
	for p.i < len(p.b) {
		c := p.b[p.i]
		switch {
		case c == '"':
			s := p.b[start:p.i]
			p.i++
			return s, utf8.Valid(s)
		case c == '\\' || c < 0x20:
			return nil, false
		}
		p.i++
	}
	return nil, false
}

// object skips a JSON object, balancing braces and brackets and skipping
// strings (escapes included). It does not validate the content: the data
// is decoded (and so validated) by DecodeData.
func (p *parser) object() bool {
	if p.i >= len(p.b) || p.b[p.i] != '{' {
		return false
	}
	depth := 0
	for p.i < len(p.b) {
		c := p.b[p.i]
		p.i++
		switch c {
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				return c == '}'
			}
			if depth < 0 {
				return false
			}
		case '"':
			for {
				if p.i >= len(p.b) {
					return false
				}
				c := p.b[p.i]
				p.i++
				if c == '\\' {
					p.i++
				} else if c == '"' {
					break
				}
			}
		}
	}
	return false
}
