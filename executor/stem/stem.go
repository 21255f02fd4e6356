// Package stem is the generic executor of a stem cell: a container started
// before anyone knows which function it will serve. It says Ready with no
// function, waits for the agent's Init, and then becomes the function: for
// Go, by exec'ing the function's static binary, which dials the agent again
// and says Ready as that function.
package stem

import (
	"context"
	"errors"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/kilnfx/kiln/proto/executorpb"
)

// Loader turns the process into the function Init names. On success it
// normally does not return (exec); returning nil means the function now
// runs elsewhere and Run may return.
type Loader func(init *pb.Init) error

// Run dials the agent at socket, says Ready as a stem cell of runtime, waits
// for Init and hands it to load. The connection is closed before load runs.
func Run(ctx context.Context, socket, runtime string, load Loader) error {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dial agent: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := pb.NewAgentClient(conn).Session(ctx)
	if err != nil {
		return fmt.Errorf("open session: %w", err)
	}
	err = stream.Send(&pb.ExecutorMsg{Msg: &pb.ExecutorMsg_Ready{Ready: &pb.Ready{
		Runtime: runtime,
		Pid:     int32(os.Getpid()),
		Version: "stem",
	}}})
	if err != nil {
		return fmt.Errorf("send ready: %w", err)
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("waiting for Init: %w", err)
		}
		switch msg := m.Msg.(type) {
		case *pb.AgentMsg_Init:
			cancel()
			conn.Close()
			if msg.Init.CodePath == "" {
				return errors.New("init without code path")
			}
			return load(msg.Init)
		case *pb.AgentMsg_Ping:
			_ = stream.Send(&pb.ExecutorMsg{Msg: &pb.ExecutorMsg_Pong{Pong: &pb.Pong{Seq: msg.Ping.Seq}}})
		}
	}
}
