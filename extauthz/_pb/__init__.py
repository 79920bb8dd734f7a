"""Generated protobuf/gRPC modules (see extauthz.tools.protogen). Do not edit."""
