"""The fulfillment service: the queue (`store`), its HTTP API (`api`), the client stations and
customers speak it with (`client`), and the station daemon (`runner`)."""
