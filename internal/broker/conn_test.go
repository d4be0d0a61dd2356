package broker

import (
	"errors"
	"fmt"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
)

func TestDefaultBackoff(t *testing.T) {
	for attempt := 1; attempt <= 12; attempt++ {
		ceiling := min(100*time.Millisecond<<(attempt-1), 5*time.Second)
		for range 50 {
			d := DefaultBackoff(attempt)
			assert.GreaterOrEqual(t, d, ceiling/2, "attempt %d", attempt)
			assert.LessOrEqual(t, d, ceiling, "attempt %d", attempt)
		}
	}
}

func TestRedact(t *testing.T) {
	assert.Equal(t, "amqp://user:xxxxx@host:5672/vh", Redact("amqp://user:s3cret@host:5672/vh"))
	assert.Equal(t, "amqp://host/", Redact("amqp://host/"))
	assert.Equal(t, "amqp://xxxxx@host/%zz", Redact("amqp://u:p@host/%zz"), "an unparsable URL still loses its credentials")
	err := redactErr(errors.New("dial amqp://u:s3cret@h: refused (s3cret)"), "amqp://u:s3cret@h/")
	assert.NotContains(t, err.Error(), "s3cret")
}

func TestClassify(t *testing.T) {
	for _, err := range []error{amqp091.ErrCredentials, amqp091.ErrSASL, amqp091.ErrVhost, &amqp091.Error{Code: amqp091.AccessRefused}} {
		c := classify(fmt.Errorf("dial: %w", err))
		assert.True(t, isPermanent(c), "%v", err)
		assert.ErrorIs(t, c, ErrAccessRefused)
	}
	assert.False(t, isPermanent(classify(errors.New("connection refused"))))
}

func TestStartRejectsBadURLs(t *testing.T) {
	for _, u := range []string{"", "http://h/", "amqp://u:p@h/%zz"} {
		_, err := Start(Config{URL: u})
		assert.Error(t, err, u)
	}
}

func TestParseURLsAndRedactLists(t *testing.T) {
	list := "amqp://u:p1@a:5672//; amqp://u:p2@b:5672//;amqp://c//"
	urls, err := ParseURLs(list)
	assert.NoError(t, err)
	assert.Equal(t, []string{"amqp://u:p1@a:5672//", "amqp://u:p2@b:5672//", "amqp://c//"}, urls)
	red := Redact(list)
	assert.NotContains(t, red, "p1")
	assert.NotContains(t, red, "p2")
	assert.Contains(t, red, "amqp://u:xxxxx@b:5672//")
	err = redactErr(errors.New("dial u:p1@a and u:p2@b failed"), list)
	assert.Equal(t, "dial u:xxxxx@a and u:xxxxx@b failed", err.Error())
	for _, bad := range []string{"", ";", "amqp://a;http://b", "amqp://a;amqp://"} {
		_, err := ParseURLs(bad)
		assert.Error(t, err, bad)
	}
}

func TestAdvance(t *testing.T) {
	c := &Conn{urls: []string{"amqp://a", "amqp://b", "amqp://c"}}
	var order []string
	for range 4 {
		order = append(order, c.urls[c.cur])
		c.advance()
	}
	assert.Equal(t, []string{"amqp://a", "amqp://b", "amqp://c", "amqp://a"}, order)

	s := &Conn{urls: []string{"amqp://a", "amqp://b", "amqp://c"}, cfg: Config{Failover: Shuffle}}
	seen := map[string]int{}
	for range 300 {
		seen[s.urls[s.cur]]++
		s.advance()
	}
	for _, u := range []string{"amqp://a", "amqp://b", "amqp://c"} {
		assert.Equal(t, 100, seen[u], "every node once a round")
	}
}
