package events

import (
	"context"
	"testing"
)

// BenchmarkDeliveryPath measures the receiver's CPU ceiling without a
// broker: decode a Celery-shaped task.multi body and offer it to one
// subscription whose handler merges it into a State.
//
//	go test -run '^$' -bench DeliveryPath ./events/
func BenchmarkDeliveryPath(b *testing.B) {
	r := offline()
	st := NewState()
	sub, err := r.Subscribe(context.Background(), st.Apply, Buffer(1<<16))
	if err != nil {
		b.Fatal(err)
	}
	body := `[{"hostname": "w1@vm", "utcoffset": 0, "pid": 9712, "clock": 66583, "uuid": "b4ff2cdd-3091-4443-ba7f-440916158df4", "result": "5", "runtime": 0.0012302519999138894, "timestamp": 1795739176.0304966, "type": "task-succeeded"}]`
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		r.handle(delivery(body))
	}
	b.StopTimer()
	_ = sub.Drain(context.Background())
	r.shutdown()
}
