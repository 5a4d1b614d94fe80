"""Who may call what, shared by the gateway and the gRPC services.

``permissions`` (permissions, roles, the principal), ``settings`` (how tokens are
verified, one set of variables for every process) and ``tokens`` (the verifier)
import nothing from the gateway or the services, so both sides verify a token the
same way; ``rpc`` applies a verified principal to the gRPC services' calls.
"""
