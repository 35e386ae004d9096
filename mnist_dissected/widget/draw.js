
function paint(canvas, values, colour) {
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(28, 28);
  for (let i = 0; i < 784; i++) {
    const v = values && values.length === 784 ? values[i] : 0;
    const [r, g, b] = colour(Math.max(0, Math.min(1, v)));
    img.data.set([r, g, b, 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
}
const grey = (v) => [255 * v, 255 * v, 255 * v];
const hot = (v) => [255 * Math.min(1, 3 * v), 255 * Math.min(1, Math.max(0, 3 * v - 1)),
                    255 * Math.max(0, 3 * v - 2)];

// The message's look by its kind (DigitPad.message_kind): a neutral hint, or an error in red.
const MESSAGE_CLASSES = { hint: "digitpad-hint", error: "digitpad-error" };

function el_(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function render({ model, el }) {
  const size = model.get("size");
  const root = el_("div", "digitpad");
  const left = el_("div", "digitpad-left");
  const canvas = el_("canvas", "digitpad-canvas");
  canvas.width = size;
  canvas.height = size;
  canvas.style.width = size + "px";
  canvas.style.height = size + "px";
  const buttons = el_("div", "digitpad-buttons");
  const clear = el_("button", "digitpad-clear", "Clear");
  const upload = el_("button", "digitpad-upload", "Upload a photo…");
  const file = el_("input", "digitpad-file");
  file.type = "file";
  file.accept = "image/*";
  file.style.display = "none";
  buttons.append(clear, upload, file);
  left.append(canvas, buttons);

  const right = el_("div", "digitpad-right");
  const answer = el_("div", "digitpad-answer");
  const prediction = el_("span", "digitpad-prediction", "–");
  answer.append("Prediction: ", prediction);
  const message = el_("div", "digitpad-message");
  const pictures = el_("div", "digitpad-pictures");
  const seen = el_("canvas", "digitpad-input");
  const saliency = el_("canvas", "digitpad-saliency");
  for (const [c, label] of [[seen, "what the model gets"], [saliency, "saliency"]]) {
    c.width = 28;
    c.height = 28;
    const fig = el_("figure", "digitpad-figure");
    fig.append(c, el_("figcaption", "", label));
    pictures.append(fig);
  }
  const bars = el_("div", "digitpad-bars");
  const rows = [];
  for (let k = 0; k < 10; k++) {
    const row = el_("div", "digitpad-bar-row");
    const bar = el_("div", "digitpad-bar");
    const track = el_("div", "digitpad-bar-track");
    track.append(bar);
    const value = el_("span", "digitpad-bar-value", "");
    row.append(el_("span", "digitpad-bar-label", String(k)), track, value);
    bars.append(row);
    rows.push({ row, bar, value });
  }
  right.append(answer, message, pictures, bars);
  root.append(left, right);
  el.append(root);

  const ctx = canvas.getContext("2d");
  const setPen = () => {
    ctx.lineWidth = model.get("line_width");
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.strokeStyle = "#000";
    ctx.fillStyle = "#000";
  };
  setPen();
  const send = () => {
    model.set("drawing", canvas.toDataURL("image/png"));
    model.save_changes();
  };
  const at = (event) => {
    const rect = canvas.getBoundingClientRect();
    return [(event.clientX - rect.left) * (canvas.width / rect.width),
            (event.clientY - rect.top) * (canvas.height / rect.height)];
  };
  let drawing = false;
  canvas.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    drawing = true;
    setPen();
    const [x, y] = at(event);
    ctx.beginPath();
    ctx.arc(x, y, ctx.lineWidth / 2, 0, 2 * Math.PI);
    ctx.fill();
    ctx.beginPath();
    ctx.moveTo(x, y);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    event.preventDefault();
    const [x, y] = at(event);
    ctx.lineTo(x, y);
    ctx.stroke();
    ctx.beginPath();
    ctx.moveTo(x, y);
  });
  const end = (event) => {
    if (!drawing) return;
    drawing = false;
    if (canvas.hasPointerCapture(event.pointerId)) canvas.releasePointerCapture(event.pointerId);
    send();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);

  // An event, not drawing = "": the pad may be clear already with a message to reset.
  clear.addEventListener("click", () => {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    model.send({ event: "clear" });
  });
  upload.addEventListener("click", () => file.click());
  // The photo's paper fills the whole canvas: its mean border colour goes around it.
  const paste = (img) => {
    const probe = document.createElement("canvas");
    probe.width = 32;
    probe.height = 32;
    const p = probe.getContext("2d");
    p.drawImage(img, 0, 0, 32, 32);
    const d = p.getImageData(0, 0, 32, 32).data;
    const sum = [0, 0, 0];
    let n = 0;
    for (let i = 0; i < 32; i++) {
      for (const [x, y] of [[i, 0], [i, 31], [0, i], [31, i]]) {
        const o = 4 * (32 * y + x);
        sum[0] += d[o]; sum[1] += d[o + 1]; sum[2] += d[o + 2]; n++;
      }
    }
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = `rgb(${sum[0] / n}, ${sum[1] / n}, ${sum[2] / n})`;
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const s = Math.min(canvas.width / img.width, canvas.height / img.height);
    const w = img.width * s, h = img.height * s;
    ctx.drawImage(img, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
  };
  file.addEventListener("change", () => {
    const chosen = file.files && file.files[0];
    // Emptied at once: a file input only reports a change of file, so the same file chosen
    // again (after a failed try, or a drawing in between) would otherwise do nothing.
    file.value = "";
    if (!chosen) return;
    const url = URL.createObjectURL(chosen);
    const img = new Image();
    // Not an image the browser can decode (a text file, a web page named .png, a HEIC photo):
    // Python says so on the pad and drops the answer to the picture before.
    const unreadable = () => {
      model.send({ event: "unreadable", name: chosen.name, type: chosen.type });
    };
    img.onerror = () => {
      URL.revokeObjectURL(url);
      unreadable();
    };
    img.onload = () => {
      let pasted = false;
      try {
        if (img.naturalWidth && img.naturalHeight) {  // not e.g. an SVG without a size
          paste(img);
          pasted = true;
        }
      } catch (error) {
        console.warn("digitpad: the upload could not be drawn", error);
      }
      URL.revokeObjectURL(url);  // decoded and drawn (or not): the file's URL is done with
      if (!pasted) return unreadable();
      setPen();
      send();
    };
    img.src = url;
  });

  const update = () => {
    const digit = model.get("prediction");
    prediction.textContent = digit >= 0 ? String(digit) : "–";
    message.textContent = model.get("message");
    message.className = "digitpad-message " +
      (MESSAGE_CLASSES[model.get("message_kind")] || MESSAGE_CLASSES.hint);
    paint(seen, model.get("image"), grey);
    paint(saliency, model.get("saliency"), hot);
    const probs = model.get("probabilities") || [];
    rows.forEach(({ row, bar, value }, k) => {
      const p = probs.length === 10 ? probs[k] : 0;
      bar.style.width = (100 * p).toFixed(1) + "%";
      value.textContent = probs.length === 10 ? p.toFixed(3) : "";
      row.classList.toggle("digitpad-winner", k === digit);
    });
  };
  const NAMES = ["prediction", "message", "message_kind", "image", "saliency", "probabilities"];
  for (const name of NAMES) {
    model.on("change:" + name, update);
  }
  update();
  return () => {
    for (const name of NAMES) {
      model.off("change:" + name, update);
    }
  };
}

export default { render };
