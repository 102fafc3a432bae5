def test_s3_server_roundtrip(s3_server):
    c = s3_server.client()
    s3_server.make_bucket("smoke")
    c.put_object(Bucket="smoke", Key="a/b.txt", Body=b"hello")
    assert c.get_object(Bucket="smoke", Key="a/b.txt")["Body"].read() == b"hello"


def test_ray_cluster_runs_tasks(ray_cluster):
    @ray_cluster.remote
    def square(x):
        return x * x

    assert ray_cluster.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
