package events

// DecodeEnvelopeFast exposes the fast envelope parser to the fuzz test.
var DecodeEnvelopeFast = decodeEnvelopeFast
