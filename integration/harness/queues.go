package harness

import (
	"errors"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// InspectQueue returns the broker's count of ready messages and consumers
// on queue, from a passive declare on a connection of its own, and false
// if the queue does not exist. Other errors fail t.
func InspectQueue(t testing.TB, queue string) (amqp091.Queue, bool) {
	t.Helper()
	conn, err := amqp091.Dial(BrokerURL())
	if err != nil {
		t.Fatalf("inspect queue %s: %v", queue, err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("inspect queue %s: %v", queue, err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		var ae *amqp091.Error
		if errors.As(err, &ae) && ae.Code == amqp091.NotFound {
			return amqp091.Queue{}, false
		}
		t.Fatalf("inspect queue %s: %v", queue, err)
	}
	return q, true
}

// DeleteQueue deletes queue, if it exists, and logs what went wrong
// otherwise; it is for cleanups.
func DeleteQueue(t testing.TB, queue string) {
	t.Helper()
	conn, err := amqp091.Dial(BrokerURL())
	if err != nil {
		t.Logf("delete queue %s: %v", queue, err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Logf("delete queue %s: %v", queue, err)
		return
	}
	if _, err := ch.QueueDelete(queue, false, false, false); err != nil {
		t.Logf("delete queue %s: %v", queue, err)
	}
}
