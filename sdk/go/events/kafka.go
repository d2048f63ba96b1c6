package events

import (
	"context"
	"fmt"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
)

// ConsumerOptions are the franz-go options that read every contract topic of a
// deployment (namespace) in a consumer group, from the earliest record when the
// group has no committed offset.
func ConsumerOptions(namespace, group string) ([]kgo.Opt, error) {
	all, err := Topics()
	if err != nil {
		return nil, err
	}
	names := make([]string, len(all))
	for i, t := range all {
		names[i] = t.In(namespace)
	}
	return []kgo.Opt{
		kgo.ConsumeTopics(names...),
		kgo.ConsumerGroup(namespace + group),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	}, nil
}

// ProducerOptions are the franz-go options a producer of contract events uses: the
// mesh's partitioning, and every record acknowledged by all in-sync replicas.
func ProducerOptions() []kgo.Opt {
	return []kgo.Opt{kgo.RecordPartitioner(Partitioner()), kgo.RequiredAcks(kgo.AllISRAcks())}
}

// Publish encodes msg (see Encode) and writes it, returning the record as written
// (with its partition and offset).
func Publish(ctx context.Context, cl *kgo.Client, msg proto.Message, opts EncodeOptions) (*kgo.Record, error) {
	rec, err := Encode(msg, opts)
	if err != nil {
		return nil, err
	}
	if err := cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
		return nil, fmt.Errorf("producing to %s: %w", rec.Topic, err)
	}
	return rec, nil
}

// TopicOfRecord returns the contract topic a record was read from, given the
// deployment's namespace.
func TopicOfRecord(rec *kgo.Record, namespace string) (Topic, bool) {
	name, ok := strings.CutPrefix(rec.Topic, namespace)
	if !ok {
		return Topic{}, false
	}
	return TopicNamed(name)
}
