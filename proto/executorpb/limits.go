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
	// ResultSlack is what a Result may carry beside its answer (the call
	// id, figures and trace): a Session's receiver refuses a message over
	// the answer limit plus this, before reading it.
	ResultSlack = 64 << 10
)

// EnvMaxResponse names the environment variable in which the agent tells
// an executor the largest answer (body, headers and error together, in
// bytes) it accepts: the node's response limit, at most
// MaxResultBodyBytes. An executor whose handler answers more sends a
// Result of ErrorClassResponseTooLarge instead; one that sends a larger
// Result anyway has its session broken by the agent's receive limit
// (the answer limit plus ResultSlack), so the agent never holds more.
// Unset, empty or unreadable means MaxResultBodyBytes.
const EnvMaxResponse = "KILN_MAX_RESPONSE"

// Values of Result.error_class.
const (
	// ErrorClassResponseTooLarge: the handler's answer (body, headers and
	// error together) was over MaxResultBodyBytes; the Result carries no
	// body.
	ErrorClassResponseTooLarge = "response_too_large"
)
