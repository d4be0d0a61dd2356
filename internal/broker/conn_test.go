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
