package executorpb

// Limits of the executor protocol, shared by the agent's Session server
// (pool) and the executors (executor/sdk), so that both sides agree on
// what fits.
const (
	// MaxMessageBytes is the largest message either side of a Session
	// sends or receives (gRPC's MaxRecvMsgSize and MaxSendMsgSize on both
	// sides).
	MaxMessageBytes = 64 << 20
	// MaxResultBodyBytes is the largest answer body a Result may carry:
	// MaxMessageBytes less 64 KiB for the rest of the message (the call
	// id, headers, error and figures). An executor whose handler answers
	// more sends instead a Result with ErrorClassResponseTooLarge.
	MaxResultBodyBytes = MaxMessageBytes - 64<<10
)

// Values of Result.error_class.
const (
	// ErrorClassResponseTooLarge: the handler's answer (body, headers and
	// error together) was over MaxResultBodyBytes; the Result carries no
	// body.
	ErrorClassResponseTooLarge = "response_too_large"
)
