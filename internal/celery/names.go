package celery

import "fmt"

// MaxShortString is AMQP's limit on queue and exchange names, routing keys,
// correlation ids, reply_to, consumer tags and header names. amqp091-go
// does not check it: it silently truncates, so stalk checks every such
// value it sends before sending it.
const MaxShortString = 255

// CheckShortString checks that v, plus room bytes that will be appended to
// it, fits in an AMQP short string; what names v in the error.
func CheckShortString(what, v string, room int) error {
	if len(v)+room > MaxShortString {
		if room > 0 {
			return fmt.Errorf("%s is %d bytes; with %d more it would exceed AMQP's %d-byte limit on names", what, len(v), room, MaxShortString)
		}
		return fmt.Errorf("%s is %d bytes, over AMQP's %d-byte limit on names and ids", what, len(v), MaxShortString)
	}
	return nil
}
