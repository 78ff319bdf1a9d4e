"""Amazon DynamoDB: a table's stream as a source (DynamoDBStreamSource, Lambda's DynamoDB Streams event source
mapping, on the shard leases of streamfn.connectors.shards) and tables as an output (DynamoDBTable).

The classes are loaded on first use, so that `streamfn.connectors.dynamodb.dialect` (Lambda's DynamoDB Streams
rules, which the in-memory source can speak too) imports no AWS client library.
"""
