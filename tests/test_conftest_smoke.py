from support import load_records, send_raw


async def test_smoke(upstream, start_proxy):
    running = await start_proxy(upstream.url)
    record = load_records("legacy-players.jsonl")[0]
    response = await send_raw(running.ports[0], record.to_bytes())
    assert response.status == 200
    assert response.body == b"true"
    assert "event:applicationId=MediaSpace" in upstream.standin.received[-1].target
