"""Generated protobuf/gRPC modules (see extauthz.protogen). Do not edit."""
